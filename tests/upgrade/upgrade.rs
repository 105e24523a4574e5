//! A binary upgrade on reload (docs/control.md, "Reload"): the file the supervisor was started
//! from is replaced on disk as a package manager does it (a new file renamed over the old), and
//! the next reload re-executes the supervisor from the new file — same pid — and rolls every
//! worker onto it; a new binary that fails is not used. The tests need their own copy of the
//! binary, hence [`OwnServer`], a supervisor started from that copy rather than from the
//! harness's `chatd`, and a second release: this crate built once more with another
//! `CHATD_BUILD_VERSION` ([`other_release`]).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::control::*;
use crate::fleet::*;
use crate::room::Room;
use crate::{CONTROL_TIMEOUT, room_server};

/// A supervisor started from a binary of our own, so the test can replace that file.
struct OwnServer {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl OwnServer {
    fn start(exe: &Path, config: &Path) -> OwnServer {
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(var);
        }
        let mut child = spawn_retrying(&mut cmd);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((addr, _)) = parse_listen_line(&line) {
                    let _ = tx.send(addr);
                }
                l.lock().unwrap().push(line);
            }
        });
        let mut server = OwnServer { child, log, addr: "0.0.0.0:0".parse().unwrap() };
        server.addr = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|e| {
            panic!("no `listening on` line ({e}); log: {:?}", server.log.lock().unwrap())
        });
        server
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
        if thread::panicking() {
            print_log("chatd log", &self.log.lock().unwrap());
        }
    }
}

/// Spawns `cmd`, retrying on ETXTBSY: the binary was just written by this process, and
/// another test thread's fork may briefly hold a copy of the (close-on-exec) write descriptor.
fn spawn_retrying(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
        }
    }
}

fn exe_inode(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
        .ino()
}

/// The release string of the second build.
const OTHER_VERSION: &str = "0.1.0-upgrade-test";

/// This crate built once more (debug) with `CHATD_BUILD_VERSION` set, built once per run of
/// this test binary and shared by its tests.
fn other_release() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        build(manifest, OTHER_VERSION, "chatd-other")
    })
}

/// The commit of the previous release, whose supervisor must hand over to this one. Move it on
/// when a release ships; its `Cargo.lock` must need no crate this one does not (the build is
/// `--offline`).
const PREVIOUS_RELEASE: &str = "01b734e21e1efb7864533bf24052a7561516af16";
const PREVIOUS_VERSION: &str = "0.1.0-previous-release";

/// [`PREVIOUS_RELEASE`]'s sources (`git archive` of this repository) built with
/// `CHATD_BUILD_VERSION` set to [`PREVIOUS_VERSION`].
fn previous_release() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let src = tmp.join(format!("previous-release-{}", &PREVIOUS_RELEASE[..12]));
        if !src.join("Cargo.toml").exists() {
            let tar = tmp.join("previous-release.tar");
            let out = Command::new("git")
                .args(["-C", env!("CARGO_MANIFEST_DIR"), "archive", "--format=tar", "-o"])
                .arg(&tar)
                .arg(PREVIOUS_RELEASE)
                .output()
                .expect("run git archive");
            assert!(
                out.status.success(),
                "git archive {PREVIOUS_RELEASE} (the previous release; a shallow clone lacks it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Unpacked beside, then renamed: an interrupted run leaves no half tree behind.
            let partial = tmp.join("previous-release.partial");
            let _ = fs::remove_dir_all(&partial);
            fs::create_dir_all(&partial).unwrap();
            let status = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&partial).status();
            assert!(status.expect("run tar").success(), "unpacking the previous release");
            fs::rename(&partial, &src).expect("move the previous release's sources in place");
            let _ = fs::remove_file(&tar);
        }
        build(&src.join("Cargo.toml"), PREVIOUS_VERSION, "chatd-previous")
    })
}

/// Builds the crate at `manifest` (debug) with `CHATD_BUILD_VERSION` = `version` into a target
/// directory under `CARGO_TARGET_TMPDIR` (incremental across runs), and copies the binary out
/// as `name`. One build at a time: the releases share that directory, hence its dependencies,
/// and each must copy its binary before another links over it.
fn build(manifest: &Path, version: &str, name: &str) -> PathBuf {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("other-release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--offline", "--bin", "chatd", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .env("CHATD_BUILD_VERSION", version)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building {version} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = target.join(name);
    fs::copy(target.join("debug").join("chatd"), &exe).expect("copy the built binary");
    assert_eq!(release_of(&exe), version);
    exe
}

/// What `EXE --version` says, without the leading `chatd `.
fn release_of(exe: &Path) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg("--version").stdout(Stdio::piped());
    let out = spawn_retrying(&mut cmd).wait_with_output().expect("--version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("chatd ").unwrap_or_else(|| panic!("{text:?}")).to_string()
}

/// Puts `bytes` at `exe` as dpkg does (a new file renamed over the old one), then waits until
/// it can be executed (a test thread's fork may briefly hold the write descriptor); returns its
/// inode.
fn install(exe: &Path, bytes: &[u8]) -> u64 {
    let staged = exe.with_file_name(".chatd.dpkg-new");
    fs::write(&staged, bytes).expect("write the new binary");
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&staged, exe).expect("rename the new binary over the old");
    let mut probe = Command::new(exe);
    probe.arg("--version").stdout(Stdio::null()).stderr(Stdio::null());
    // Started is enough (a script standing in for a binary may never end).
    let mut started = spawn_retrying(&mut probe);
    let _ = started.kill();
    let _ = started.wait();
    fs::metadata(exe).unwrap().ino()
}

/// `chatd status --json`, unparsed.
fn status_json(control: &Path) -> serde_json::Value {
    let out =
        run_chatd(&["status", "--json", "--control", control.to_str().unwrap()], CONTROL_TIMEOUT);
    assert!(out.status.success(), "chatd status failed: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// The `/metrics` address, from the server's log.
fn metrics_addr(server: &OwnServer) -> SocketAddr {
    let log = server.log.lock().unwrap();
    let line = log.iter().find_map(|l| l.split("serving metrics on http://").nth(1));
    let addr = line.and_then(|rest| rest.strip_suffix("/metrics"));
    addr.unwrap_or_else(|| panic!("no metrics line in {log:?}")).parse().expect("metrics address")
}

/// Every sample of `/metrics`, by series.
fn scrape(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer:?}"));
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_string(), value.parse().expect("a number")))
        .collect()
}

/// No counter of `after` is below its value in `before`.
fn expect_counters_kept(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) {
    let counter = |s: &str| {
        s.split('{').next().is_some_and(|n| n.ends_with("_total") && n != "chatd_clients_total")
    };
    let mut compared = 0;
    for (series, value) in before.iter().filter(|(s, _)| counter(s)) {
        let now = after.get(series).unwrap_or_else(|| panic!("{series} gone after the upgrade"));
        assert!(now >= value, "{series} went back from {value} to {now} across the upgrade");
        compared += 1;
    }
    assert!(compared > 10, "only {compared} counters compared");
}

/// The supervisor `sup` and the `workers` all run the file with inode `ino`, and status says
/// `version` for each, with the last reload a success.
fn expect_running(control: &Path, sup: i32, workers: &[i32], ino: u64, version: &str) {
    assert_eq!(exe_inode(sup), ino, "the supervisor does not run the new file");
    for &pid in workers {
        assert_eq!(exe_inode(pid), ino, "worker {pid} does not run the new file");
    }
    let v = status_json(control);
    assert_eq!(v["pid"], sup, "{v}");
    assert_eq!(v["version"], version, "{v}");
    let listed: Vec<&serde_json::Value> = v["workers"].as_array().unwrap().iter().collect();
    assert!(listed.iter().all(|w| w["version"] == version), "worker versions: {v}");
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
}

/// A server started from `DIR/bin/chatd`, a copy of the harness's binary, serving `/metrics`
/// too.
fn own_server(workers: usize) -> (tempfile::TempDir, PathBuf, PathBuf, OwnServer) {
    own_server_from(&fs::read(CHATD).unwrap(), workers)
}

/// [`own_server`] from a copy of `binary`.
fn own_server_from(
    binary: &[u8],
    workers: usize,
) -> (tempfile::TempDir, PathBuf, PathBuf, OwnServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let exe = bin.join("chatd");
    install(&exe, binary);
    let control = dir.path().join("control.sock");
    let config = dir.path().join("chatd.toml");
    let builder = room_server(workers).raw("[metrics]\nlisten = \"127.0.0.1:0\"");
    fs::write(&config, builder.render(&control)).unwrap();
    let server = OwnServer::start(&exe, &config);
    (dir, exe, control, server)
}

/// 200 renamed clients, 10 of them chatting every 50 ms. The binary is replaced by another
/// release and `chatd reload` upgrades: it answers, the supervisor keeps its pid and runs the
/// new file, so does every worker, and status shows the new version everywhere. Then back to
/// the first binary the same way. Nobody is disconnected, every client reads every load line
/// exactly once in one order, and every nick is kept.
#[test]
fn upgrade_and_back_under_load() {
    const ORIGINALS: usize = 200;
    const SENDERS: usize = 10;
    const SEND_EVERY: Duration = Duration::from_millis(50);
    const MAX_IN_FLIGHT: usize = 10 * SENDERS;
    const WAIT: Duration = Duration::from_secs(120);

    let other = fs::read(other_release()).unwrap();
    let first = fs::read(CHATD).unwrap();
    let first_version = release_of(Path::new(CHATD));
    assert_ne!(first_version, OTHER_VERSION);
    let (_dir, exe, control, server) = own_server(4);
    let sup = server.pid();
    let mut st = wait_settled(&control, sup, 4, 1, &[]);
    let fleet = Fleet::new();
    fleet.join_named(server.addr, ORIGINALS, WAIT);

    let stop = AtomicBool::new(false);
    let sent = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop]);
        let senders = scope.spawn(|| {
            let mut counts = vec![0u32; SENDERS];
            let mut total = 0usize;
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                while total > MAX_IN_FLIGHT + fleet.with(|t| t[0].chats.len())
                    && !stop.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(5));
                    next = Instant::now();
                }
                for (s, count) in counts.iter_mut().enumerate() {
                    fleet.send(s, &format!("m {s} {count}")).expect("send a load line");
                    *count += 1;
                    total += 1;
                }
                // Pacing, not synchronisation.
                next += SEND_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            counts
        });
        let flowing = |at_least: usize| {
            fleet.wait(WAIT, &format!("{at_least} load lines at client 0"), |t| {
                t[0].chats.len() >= at_least
            })
        };
        flowing(2 * SENDERS);
        let metrics = metrics_addr(&server);
        for (generation, bytes, version) in
            [(2, &other, OTHER_VERSION), (3, &first, first_version.as_str())]
        {
            let ino = install(&exe, bytes);
            let before = scrape(metrics);
            let t0 = Instant::now();
            let out = reload_at(&control);
            let took = t0.elapsed();
            expect_reload_ok(&out, generation, 4);
            let after = scrape(metrics);
            expect_counters_kept(&before, &after);
            let info = format!("chatd_build_info{{version=\"{version}\"}}");
            assert_eq!(after.get(&info), Some(&1.0), "{info} after the upgrade: {after:?}");
            eprintln!("upgrade to {version} with {ORIGINALS} clients: `chatd reload` {took:?}");
            let before = st.pids();
            st = wait_settled(&control, sup, 4, generation, &before);
            expect_running(&control, sup, &st.pids(), ino, version);
            let now = fleet.with(|t| t[0].chats.len());
            flowing(now + 2 * SENDERS);
        }
        stop.store(true, Ordering::SeqCst);
        senders.join().expect("senders")
    });

    assert_eq!(server.pid(), sup);
    for i in 0..ORIGINALS {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick after the upgrades");
    }
    fleet.wait(WAIT, "`* you are already u<i>` at every client", |t| t.iter().all(|x| x.already));
    let last = ORIGINALS - 1;
    fleet.send(last, &format!("final {last}")).expect("send final");
    fleet.wait(WAIT, "the final marker at every client", |t| t.iter().all(|x| x.finals >= 1));
    fleet.with(|t| expect_one_order(t, &sent));
    assert_eq!(status_json(&control)["clients"], ORIGINALS);
}

/// Nobody disconnected or read anything unexpected, and every client read every sender's
/// lines exactly once, in the order sent, all clients in the same order.
fn expect_one_order(t: &[&Tally], sent: &[u32]) {
    for (i, x) in t.iter().enumerate() {
        assert!(x.closed.is_none(), "client #{i} disconnected: {:?}", x.closed);
        assert_eq!(x.unexpected_count, 0, "client #{i} read {:?}", x.unexpected);
        assert_eq!(x.finals, 1, "client #{i}: final marker count");
    }
    let reference = &t[0].chats;
    let mut next = vec![0u32; sent.len()];
    for &m in reference {
        let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
        assert_eq!(n, next[s], "client 0, sender u{s}: line {n} lost, repeated or reordered");
        next[s] += 1;
    }
    assert_eq!(next, sent, "client 0: load lines received per sender vs sent");
    for (i, x) in t.iter().enumerate().skip(1) {
        let at = x.chats.iter().zip(reference).position(|(a, b)| a != b);
        assert!(x.chats == *reference, "client {i} differs from client 0 at {at:?}");
    }
}

/// A new binary that exits at once (here a shell script, renamed over the binary) is not used:
/// `chatd reload` fails with the reason, status shows it, the supervisor still runs the old
/// file and version, nobody notices; a good binary then upgrades as usual.
#[test]
fn a_new_binary_that_fails_is_not_used() {
    let first_version = release_of(Path::new(CHATD));
    let (_dir, exe, control, server) = own_server(2);
    let sup = server.pid();
    let st = wait_settled(&control, sup, 2, 1, &[]);
    let old_ino = fs::metadata(&exe).unwrap().ino();
    let mut room = Room::default();
    for _ in 0..6 {
        room.join_at(server.addr, "c");
    }

    install(&exe, b"#!/bin/sh\nexit 1\n");
    let out = reload_at(&control);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("upgrade failed") && text.contains("exit status: 1"), "{text}");
    let v = status_json(&control);
    assert_eq!(v["last_reload"]["ok"], false, "{v}");
    assert!(v["last_reload"]["error"].as_str().unwrap().contains("exit status: 1"), "{v}");
    assert_eq!(v["version"], first_version.as_str(), "{v}");
    assert_eq!(v["generation"], 1, "{v}");
    assert_eq!(status_at(&control).pids(), st.pids(), "the workers were replaced");
    expect_old(sup, &st.pids(), old_ino);
    room.quiet_check(0, "still here after a failed upgrade");

    let ino = install(&exe, &fs::read(other_release()).unwrap());
    expect_reload_ok(&reload_at(&control), 2, 2);
    let after = wait_settled(&control, sup, 2, 2, &st.pids());
    expect_running(&control, sup, &after.pids(), ino, OTHER_VERSION);
    room.quiet_check(1, "upgraded after all");
}

/// A new binary that never answers the probe is given 10 s, then killed and not used.
#[test]
fn a_new_binary_that_hangs_is_not_used() {
    let (_dir, exe, control, server) = own_server(1);
    let sup = server.pid();
    let st = wait_settled(&control, sup, 1, 1, &[]);
    let old_ino = fs::metadata(&exe).unwrap().ino();
    let mut room = Room::default();
    room.join_at(server.addr, "c");
    room.join_at(server.addr, "c");

    install(&exe, b"#!/bin/sh\nexec sleep 60\n");
    let t0 = Instant::now();
    let out = reload_at(&control);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("did not answer within 10s"), "{text}");
    assert!(t0.elapsed() >= Duration::from_secs(10), "answered after {:?}", t0.elapsed());
    expect_old(sup, &st.pids(), old_ino);
    room.quiet_check(0, "still here after a hung upgrade");
}

/// The supervisor and its workers still run the file with inode `ino` (now replaced).
fn expect_old(sup: i32, workers: &[i32], ino: u64) {
    assert_eq!(exe_inode(sup), ino, "the supervisor left its binary");
    for &pid in workers {
        assert_eq!(exe_inode(pid), ino, "worker {pid} left its binary");
    }
}

/// The previous release's supervisor upgrades to this one in place: this release reads the
/// state an older one wrote (docs/architecture.md, "The state"), adopts its slots, workers and
/// room, and rolls the workers; its clients stay, with their nicks, in one room.
#[test]
fn the_previous_release_upgrades_to_this_one() {
    let (_dir, exe, control, server) = own_server_from(&fs::read(previous_release()).unwrap(), 2);
    let sup = server.pid();
    let st = wait_settled(&control, sup, 2, 1, &[]);
    assert_eq!(status_json(&control)["version"], PREVIOUS_VERSION);
    let mut room = Room::default();
    for _ in 0..6 {
        room.join_at(server.addr, "c");
    }
    let old_nick = std::mem::replace(&mut room.nicks[1], "keeper".to_string());
    room.clients[1].send_line("/nick keeper");
    for c in &mut room.clients {
        c.expect_line(&format!("* {old_nick} is now known as keeper"));
    }
    room.chat(0, "said under the previous release");

    let ino = install(&exe, &fs::read(CHATD).unwrap());
    expect_reload_ok(&reload_at(&control), 2, 2);
    let after = wait_settled(&control, sup, 2, 2, &st.pids());
    expect_running(&control, sup, &after.pids(), ino, &release_of(Path::new(CHATD)));
    room.quiet_check(5, "said under this release");
    room.clients[1].send_line("/nick keeper");
    room.clients[1].expect_line("* you are already keeper");
    assert_eq!(status_json(&control)["clients"], 6);
}
