//! The packaging (SPEC §6), end to end under a real systemd: the test builds the Debian package
//! (`cargo deb`, around the binary under test), boots a throw-away systemd 252 with
//! `shared/tools/systemd-sandbox`, installs the package there with `dpkg -i` and drives the
//! service the way an operator does: `systemctl start` (returns after READY=1), TCP clients
//! chatting from the host, `StatusText`, `systemctl reload` (good and broken config), a hung
//! worker, a crashed supervisor (Restart=on-failure), `systemctl stop`, the hardening in
//! effect, an upgrade (reinstall: the running service is reloaded, not restarted) and
//! `dpkg --purge`. A second sandbox checks that `systemd-analyze verify` is clean.
//!
//! Needs root and the sandbox tool: found at `$CHATD_SYSTEMD_SANDBOX`, else
//! `../shared/tools/systemd-sandbox` beside the repository. Where either is missing, or the
//! sandbox cannot boot, the sandbox tests print `SKIPPED: reason` on stderr and pass; with
//! `CHATD_REQUIRE_SANDBOX=1` they fail instead. The package comes from `$CHATD_DEB` if set
//! (e.g. a release build), else from `cargo deb --no-build` around the test binary if
//! cargo-deb is installed (`packaging/ci-setup.sh`), else the same files are installed with
//! `cp` and the maintainer scripts are run by hand (the output says which).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Deadline of one command run in (or on) the sandbox.
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// The worker count and heartbeat timeout the test writes into the installed config.
const WORKERS: usize = 2;

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` to completion with a deadline (killed, then a panic, after `timeout`).
fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A message that `cargo test` shows even for a passing test (not captured).
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "systemd_sandbox: {msg}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sandbox_tool() -> Option<PathBuf> {
    match std::env::var_os("CHATD_SYSTEMD_SANDBOX") {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(Path::new(MANIFEST_DIR).join("../shared/tools/systemd-sandbox")),
    }
    .filter(|p| p.is_file())
}

/// Skips (returns `None` after printing why) where the sandbox cannot run, unless
/// `CHATD_REQUIRE_SANDBOX=1`.
fn sandbox_or_skip(test: &str) -> Option<Sandbox> {
    let require = std::env::var("CHATD_REQUIRE_SANDBOX").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        if require {
            panic!("{test}: {why} (and CHATD_REQUIRE_SANDBOX=1)");
        }
        note(&format!("SKIPPED {test}: {why}"));
        None
    };
    if !is_root() {
        return skip("needs root to boot systemd-sandbox".into());
    }
    let Some(tool) = sandbox_tool() else {
        return skip(format!(
            "no sandbox tool (set CHATD_SYSTEMD_SANDBOX, or put shared/tools/systemd-sandbox \
             beside the repository: looked at {MANIFEST_DIR}/../shared/tools/systemd-sandbox)"
        ));
    };
    match Sandbox::up(&tool) {
        Ok(s) => Some(s),
        Err(e) => skip(format!("`systemd-sandbox up` failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------

/// A running systemd-sandbox; `down` on drop (after printing chatd's journal on a panic).
struct Sandbox {
    tool: PathBuf,
    dir: PathBuf,
}

impl Sandbox {
    fn up(tool: &Path) -> Result<Sandbox, String> {
        // The tool owns DIR (and removes it on `down`); no ',', ':' or blanks in it.
        let dir = tempfile::Builder::new()
            .prefix("chatd-sandbox-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = run(Command::new(tool).arg("up").arg(&dir), None, CMD_TIMEOUT);
        let sandbox = Sandbox { tool: tool.to_path_buf(), dir };
        if !out.status.success() {
            return Err(output_text(&out));
        }
        Ok(sandbox)
    }

    /// Runs `args` inside the sandbox.
    fn exec_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run(Command::new(&self.tool).arg("exec").arg(&self.dir).args(args), stdin, CMD_TIMEOUT)
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.exec_in(args, None)
    }

    /// Runs `args` inside; must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "`{}` failed: {}", args.join(" "), output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `data` to `path` inside (mode `mode`).
    fn write(&self, path: &str, data: &[u8], mode: &str) {
        let script = "mkdir -p \"$(dirname \"$1\")\" && cat >\"$1.tmp\" && chmod \"$2\" \"$1.tmp\" \
                      && mv -f \"$1.tmp\" \"$1\"";
        let out = self.exec_in(&["sh", "-c", script, "sh", path, mode], Some(data));
        assert!(out.status.success(), "writing {path}: {}", output_text(&out));
    }

    fn read(&self, path: &str) -> String {
        self.ok(&["cat", path])
    }

    fn cp(&self, src: &Path, dst: &str) {
        let out = run(
            Command::new(&self.tool).arg("cp").arg(&self.dir).arg(src).arg(dst),
            None,
            CMD_TIMEOUT,
        );
        assert!(out.status.success(), "cp {} {dst}: {}", src.display(), output_text(&out));
    }

    /// `systemctl show -P PROP chatd`.
    fn prop(&self, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-P", prop, "chatd.service"]).trim_end().to_string()
    }

    fn wait_prop(&self, prop: &str, expected: &str) {
        let mut last = String::new();
        let deadline = Instant::now() + LINE_TIMEOUT;
        while Instant::now() < deadline {
            last = self.prop(prop);
            if last == expected {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("{prop} of chatd.service is {last:?}, expected {expected:?}");
    }

    /// `chatd status --json` inside (as root, through the control socket).
    fn status_json(&self) -> serde_json::Value {
        let out = self.ok(&["chatd", "status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("chatd status --json: {e}: {out}"))
    }

    /// (slot, pid, generation) of every worker, sorted by slot (pids of the sandbox's pid
    /// namespace).
    fn workers(&self) -> Vec<(u64, u64, u64)> {
        let status = self.status_json();
        let mut w: Vec<(u64, u64, u64)> = status["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("no workers in {status}"))
            .iter()
            .map(|w| {
                let n = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
                (n("slot"), n("pid"), n("generation"))
            })
            .collect();
        w.sort();
        w
    }

    /// The `Key:` lines of `/proc/PID/status` of a process in the sandbox.
    fn proc_status(&self, pid: u64) -> Vec<(String, String)> {
        self.ok(&["cat", &format!("/proc/{pid}/status")])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            let out =
                self.exec(&["journalctl", "-u", "chatd", "--no-pager", "-o", "short-precise"]);
            eprintln!("----- journalctl -u chatd -----\n{}", output_text(&out));
        }
        let out = run(Command::new(&self.tool).arg("down").arg(&self.dir), None, CMD_TIMEOUT);
        if !out.status.success() {
            eprintln!("systemd-sandbox down {}: {}", self.dir.display(), output_text(&out));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The package
// ---------------------------------------------------------------------------------------------

enum Package {
    Deb(PathBuf),
    /// No cargo-deb: the files are copied and the maintainer scripts run by hand.
    Files,
}

/// `$CHATD_DEB`, else `cargo deb` around the binary under test, else [`Package::Files`].
fn obtain_package(scratch: &Path) -> Package {
    if let Some(deb) = std::env::var_os("CHATD_DEB") {
        let deb = PathBuf::from(deb);
        assert!(deb.is_file(), "CHATD_DEB={} is not a file", deb.display());
        note(&format!("package: {} (CHATD_DEB)", deb.display()));
        return Package::Deb(deb);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_deb {
        note(
            "cargo-deb is not installed (packaging/ci-setup.sh installs it): installing the files with cp and running the maintainer scripts by hand",
        );
        return Package::Files;
    }
    // `cargo deb` packages target/release/chatd of its target dir: give it a scratch target
    // dir holding the binary under test, and no build.
    let target = scratch.join("target");
    fs::create_dir_all(target.join("release")).unwrap();
    fs::copy(CHATD, target.join("release/chatd")).unwrap();
    let deb = scratch.join("chatd.deb");
    let started = Instant::now();
    let out = run(
        Command::new(&cargo)
            .args(["deb", "--no-build", "--fast", "--no-strip", "-o"])
            .arg(&deb)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(MANIFEST_DIR),
        None,
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "cargo deb failed: {}", output_text(&out));
    note(&format!(
        "package: built with `cargo deb --no-build` around the test binary in {:?}",
        started.elapsed()
    ));
    Package::Deb(deb)
}

/// Repository file → installed path (the `assets` of `[package.metadata.deb]`).
const FILES: &[(&str, &str, &str)] = &[
    ("packaging/chatd.service", "/lib/systemd/system/chatd.service", "644"),
    ("packaging/chatd.toml", "/etc/chatd/chatd.toml", "644"),
    ("packaging/sysctl.d/60-chatd.conf", "/usr/lib/sysctl.d/60-chatd.conf", "644"),
    ("packaging/sysusers.d/chatd.conf", "/usr/lib/sysusers.d/chatd.conf", "644"),
];

fn install(sb: &Sandbox, package: &Package) -> String {
    match package {
        Package::Deb(deb) => {
            sb.cp(deb, "/tmp/chatd.deb");
            let out = sb.exec(&["dpkg", "-i", "/tmp/chatd.deb"]);
            assert!(out.status.success(), "dpkg -i: {}", output_text(&out));
            let status = sb.ok(&["dpkg-query", "-W", "-f", "${Status} ${Conffiles}", "chatd"]);
            assert!(status.starts_with("install ok installed"), "dpkg-query: {status}");
            assert!(status.contains("/etc/chatd/chatd.toml "), "config is no conffile: {status}");
            output_text(&out)
        }
        Package::Files => {
            sb.cp(Path::new(CHATD), "/usr/bin/chatd");
            for (src, dst, mode) in FILES {
                let data = fs::read(Path::new(MANIFEST_DIR).join(src)).unwrap();
                sb.write(dst, &data, mode);
            }
            for script in ["postinst", "prerm", "postrm"] {
                let data = fs::read(Path::new(MANIFEST_DIR).join("packaging/debian").join(script));
                sb.write(&format!("/tmp/{script}"), &data.unwrap(), "755");
            }
            sb.ok(&["/tmp/postinst", "configure"])
        }
    }
}

/// `dpkg --purge`, or prerm + rm + postrm by hand.
fn uninstall(sb: &Sandbox, package: &Package) {
    match package {
        Package::Deb(_) => {
            sb.ok(&["dpkg", "--purge", "chatd"]);
        }
        Package::Files => {
            sb.ok(&["/tmp/prerm", "remove"]);
            let mut rm = vec!["rm", "-rf", "/usr/bin/chatd", "/etc/chatd"];
            rm.extend(FILES.iter().map(|f| f.1));
            sb.ok(&rm);
            sb.ok(&["/tmp/postrm", "purge"]);
        }
    }
}

/// A port nobody listens on now (the sandbox shares the host's network).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The packaged config with `line` (which must be there exactly once) replaced.
fn replace_line(text: &str, line: &str, with: &str) -> String {
    let n = text.lines().filter(|l| *l == line).count();
    assert_eq!(n, 1, "packaging/chatd.toml must contain the line {line:?} once");
    text.lines().map(|l| if l == line { with } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

/// Connects and reads the welcome and the history that follows (packaged config: up to 10
/// room lines), so the next line read is live: a private message to ourselves marks the end.
fn join(addr: SocketAddr, label: &str) -> (Client, String) {
    let mut c = Client::connect(addr, label);
    let (nick, _) = c.expect_welcome();
    c.send_line(&format!("/msg {nick} sync-{label}"));
    let mark = format!("[pm to {nick}] sync-{label}");
    c.read_until(LINE_TIMEOUT, |l| l.ends_with(&mark))
        .unwrap_or_else(|e| panic!("{label}: no pm to self: {e}; read {:?}", c.transcript()));
    (c, nick)
}

/// `from` says `text`; every client in `all` (sender included, echo is on) reads it next.
fn chat(clients: &mut [&mut Client], from: usize, nick: &str, text: &str) {
    clients[from].send_line(text);
    for c in clients.iter_mut() {
        let line = c
            .read_until(LINE_TIMEOUT, |l| parse_chat(l).is_some())
            .unwrap_or_else(|e| panic!("{}: no chat line: {e}", c.label()));
        let parsed = parse_chat(&line).unwrap();
        assert_eq!(
            (parsed.nick.as_str(), parsed.text.as_str()),
            (nick, text),
            "{}: {line:?}, lines read so far: {:#?}",
            c.label(),
            c.transcript()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests without systemd
// ---------------------------------------------------------------------------------------------

/// `packaging/chatd.toml` is `config/chatd.toml` but for the header comment, the control
/// socket (the packaged one is /run/chatd/control.sock, in systemd's RuntimeDirectory) and the
/// comment above it. Every key, default and key comment must stay the same.
#[test]
fn packaged_config_matches_repo_config() {
    fn normalise(text: &str) -> (Vec<String>, String) {
        let mut lines: Vec<&str> = text.lines().collect();
        // The leading comment block (up to the first blank line).
        let body = lines.iter().position(|l| l.is_empty()).expect("a blank line after the header");
        lines.drain(..body);
        let at = lines
            .iter()
            .position(|l| l.starts_with("control_socket = "))
            .expect("a control_socket line");
        let value = lines[at].to_string();
        let mut start = at;
        while start > 0 && lines[start - 1].starts_with('#') {
            start -= 1;
        }
        lines.drain(start..=at);
        (lines.into_iter().map(str::to_string).collect(), value)
    }
    let read = |p: &str| fs::read_to_string(Path::new(MANIFEST_DIR).join(p)).unwrap();
    let (repo, _) = normalise(&read("config/chatd.toml"));
    let (packaged, socket) = normalise(&read("packaging/chatd.toml"));
    assert_eq!(socket, "control_socket = \"/run/chatd/control.sock\"");
    for (i, (a, b)) in repo.iter().zip(&packaged).enumerate() {
        assert_eq!(
            a, b,
            "config/chatd.toml and packaging/chatd.toml differ (line {i} of the body)"
        );
    }
    assert_eq!(repo.len(), packaged.len(), "config/chatd.toml and packaging/chatd.toml differ");
    // And the packaged file is a valid config.
    let out = run_chatd(
        &["check-config", "--config", &format!("{MANIFEST_DIR}/packaging/chatd.toml")],
        LINE_TIMEOUT,
    );
    assert!(out.status.success(), "packaging/chatd.toml: {}", output_text(&out));
}

/// The unit says what SPEC §6 asks for (checked again, as systemd sees it, in the sandbox).
#[test]
fn unit_file_has_the_contract_settings() {
    let unit = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/bin/chatd serve --config /etc/chatd/chatd.toml"),
        ("ExecReload", "/usr/bin/chatd reload --config /etc/chatd/chatd.toml"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("WatchdogSec", "10s"),
        ("RuntimeDirectory", "chatd"),
        ("User", "chatd"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(get(key), vec![value], "{key}= in packaging/chatd.service");
    }
    assert_eq!(get("SystemCallFilter")[0], "@system-service");
    let nofile: u64 = get("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 100_000, "LimitNOFILE={nofile}: below the default max_clients");
    // heartbeat_timeout (default 5s) must stay below WatchdogSec, or a hung worker would get
    // the whole service killed before the supervisor replaces it.
    let config = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.toml")).unwrap();
    assert!(config.lines().any(|l| l == "heartbeat_timeout = \"5s\""));
}

#[test]
fn maintainer_scripts_are_executable_posix_sh() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = Path::new(MANIFEST_DIR).join("packaging/debian").join(script);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable: {mode:o}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: not a /bin/sh script");
        assert!(text.contains("\nset -e\n"), "{script}: no set -e");
        let out = run(Command::new("sh").arg("-n").arg(&path), None, LINE_TIMEOUT);
        assert!(out.status.success(), "sh -n {script}: {}", output_text(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests under systemd
// ---------------------------------------------------------------------------------------------

/// `systemd-analyze verify` of the installed unit prints nothing (any output is a warning:
/// unknown key, bad value, missing binary, ...). Run inside a sandbox, where /usr/bin/chatd
/// exists, with the sandbox tool's own `verify`.
#[test]
fn unit_verifies_clean() {
    let Some(sb) = sandbox_or_skip("unit_verifies_clean") else { return };
    sb.cp(Path::new(CHATD), "/usr/bin/chatd");
    sb.cp(
        &Path::new(MANIFEST_DIR).join("packaging/chatd.service"),
        "/lib/systemd/system/chatd.service",
    );
    sb.cp(&sb.tool.clone(), "/usr/local/sbin/systemd-sandbox");
    let out = sb.exec(&[
        "/usr/local/sbin/systemd-sandbox",
        "verify",
        "/lib/systemd/system/chatd.service",
    ]);
    assert!(out.status.success(), "systemd-analyze verify: {}", output_text(&out));
    assert_eq!(output_text(&out), "", "systemd-analyze verify printed warnings");
    // A deliberately broken copy must fail, or this test could not fail.
    let unit = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.service")).unwrap();
    sb.write(
        "/tmp/broken.service",
        unit.replace("KillMode=mixed", "KillMode=mixd").as_bytes(),
        "644",
    );
    let out = sb.exec(&["/usr/local/sbin/systemd-sandbox", "verify", "/tmp/broken.service"]);
    assert!(!out.status.success(), "verify accepted KillMode=mixd: {}", output_text(&out));
}

/// The package under systemd, as an operator uses it.
#[test]
fn packaged_service_end_to_end() {
    let Some(sb) = sandbox_or_skip("packaged_service_end_to_end") else { return };
    let test_start = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let package = obtain_package(scratch.path());

    // --- install: user created, service neither enabled nor started, config as shipped.
    let install_out = install(&sb, &package);
    assert!(
        install_out.contains("systemctl enable --now chatd"),
        "postinst should tell how to start: {install_out}"
    );
    let passwd = sb.ok(&["getent", "passwd", "chatd"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let uid: u64 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "chatd must be a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert_eq!(sb.prop("LoadState"), "loaded");
    assert_eq!(sb.prop("ActiveState"), "inactive", "the package must not start chatd");
    assert_eq!(sb.prop("UnitFileState"), "disabled", "the package must not enable chatd");
    let shipped = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.toml")).unwrap();
    assert_eq!(sb.read("/etc/chatd/chatd.toml"), shipped);
    assert!(
        sb.read("/usr/lib/sysctl.d/60-chatd.conf").contains("\nnet.ipv4.tcp_migrate_req = 1\n")
    );

    // --- configure: a free port on loopback, 2 workers, a short heartbeat timeout.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config =
        replace_line(&shipped, "listen = [\"0.0.0.0:9999\"]", &format!("listen = [\"{addr}\"]"));
    let config = replace_line(&config, "workers = \"auto\"", &format!("workers = {WORKERS}"));
    let config = replace_line(&config, "heartbeat_timeout = \"5s\"", "heartbeat_timeout = \"2s\"");
    sb.write("/etc/chatd/chatd.toml", config.as_bytes(), "644");

    // --- start: returns after READY=1, so the port accepts right away.
    sb.ok(&["systemctl", "start", "chatd"]);
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.prop("SubState"), "running");
    let mut alice = Client::connect(addr, "alice");
    match alice.read_line(Duration::from_secs(5)) {
        Ok(l) if parse_welcome(&l).is_some() => {}
        other => panic!("first client after `systemctl start`: {other:?}"),
    }
    drop(alice);
    let (mut alice, alice_nick) = join(addr, "alice");
    let (mut bob, bob_nick) = join(addr, "bob");
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "hello from bob");
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "hi bob");
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 1"));
    let main_pid: u64 = sb.prop("MainPID").parse().unwrap();

    // --- hardening, as systemd applied it.
    for (prop, expected) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("WatchdogUSec", "10s"),
        ("User", "chatd"),
        ("RuntimeDirectory", "chatd"),
        ("RuntimeDirectoryMode", "0750"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("LimitNOFILE", "524288"),
    ] {
        assert_eq!(sb.prop(prop), expected, "systemctl show -P {prop} chatd");
    }
    let filter = sb.prop("SystemCallFilter");
    let allowed: Vec<&str> = filter.split_whitespace().collect();
    for syscall in ["epoll_wait", "accept4", "sendmsg", "execve", "clone"] {
        assert!(allowed.contains(&syscall), "SystemCallFilter lacks {syscall}");
    }
    for syscall in ["mount", "setuid", "ptrace", "reboot", "setrlimit"] {
        assert!(!allowed.contains(&syscall), "SystemCallFilter allows {syscall}");
    }
    // The fd limit as applied: 524288, or the host's hard limit where that is lower (this VM
    // clamps to 20000).
    let mut host = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut host) }, 0);
    let nofile = 524_288u64.min(host.rlim_max);
    let workers = sb.workers();
    assert_eq!(workers.len(), WORKERS, "{workers:?}");
    for pid in std::iter::once(main_pid).chain(workers.iter().map(|w| w.1)) {
        let status = sb.proc_status(pid);
        let get = |k: &str| {
            status.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let ids = format!("{uid} {uid} {uid} {uid}");
        assert_eq!(get("Uid"), ids, "pid {pid}: Uid");
        assert_eq!(get("Gid"), ids, "pid {pid}: Gid (group chatd has the user's id)");
        assert_eq!(get("NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(get("Seccomp"), "2", "pid {pid}: seccomp filter mode");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(get(cap), "0000000000000000", "pid {pid}: {cap}");
        }
        let limits = sb.read(&format!("/proc/{pid}/limits"));
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(nums, vec![nofile.to_string(); 2], "pid {pid}: {line}");
    }
    let run_dir = sb.ok(&["stat", "-c", "%a %U %G", "/run/chatd", "/run/chatd/control.sock"]);
    assert_eq!(run_dir, "750 chatd chatd\n600 chatd chatd\n");
    let security = sb.ok(&["systemd-analyze", "security", "--no-pager", "chatd.service"]);
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for chatd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {security}"));
    assert!(exposure <= 2.0, "systemd-analyze security: exposure {exposure} (was 1.2)");
    note(&format!("systemd-analyze security chatd: exposure {exposure}"));

    // --- reload: generation 2, new workers, clients keep chatting.
    sb.ok(&["systemctl", "reload", "chatd"]);
    let reloaded = sb.workers();
    assert_eq!(reloaded.len(), WORKERS, "{reloaded:?}");
    for w in &reloaded {
        assert_eq!(w.2, 2, "`systemctl reload` returned before the reload was done: {reloaded:?}");
        assert!(!workers.iter().any(|o| o.1 == w.1), "worker {} survived: {workers:?}", w.1);
    }
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 2"));
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.prop("MainPID"), main_pid.to_string());
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "after the reload");

    // --- a broken config: reload fails, nothing changes, the failure shows in StatusText.
    let broken = replace_line(&config, "[server]", "[server]\nno_such_key = 1");
    sb.write("/etc/chatd/chatd.toml", broken.as_bytes(), "644");
    let out = sb.exec(&["systemctl", "reload", "chatd"]);
    assert!(!out.status.success(), "reload of a broken config succeeded: {}", output_text(&out));
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.workers(), reloaded, "a failed reload changed the workers");
    let status = sb.prop("StatusText");
    assert!(
        status.starts_with(&format!(
            "{WORKERS} workers, 2 clients, generation 2; last reload failed: "
        )),
        "StatusText after a failed reload: {status:?}"
    );
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    assert!(
        journal.lines().any(|l| l.contains("/etc/chatd/chatd.toml:") && l.contains("no_such_key")),
        "the reload error (file:line:col) is not in the journal"
    );
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "still here");
    sb.write("/etc/chatd/chatd.toml", config.as_bytes(), "644");
    sb.ok(&["systemctl", "reload", "chatd"]);
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 3"));
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "after the repair");

    // --- upgrade: installing the package again reloads the running service onto the new
    // binary (postinst: try-reload-or-restart), keeping the clients and the edited conffile.
    let upgrade_out = match &package {
        Package::Deb(_) => sb.ok(&["dpkg", "-i", "/tmp/chatd.deb"]),
        Package::Files => sb.ok(&["/tmp/postinst", "configure", "0.1.0-1"]),
    };
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 4"));
    assert_eq!(
        sb.prop("MainPID"),
        main_pid.to_string(),
        "the upgrade restarted chatd: {upgrade_out}"
    );
    assert_eq!(sb.read("/etc/chatd/chatd.toml"), config, "the upgrade replaced the edited config");
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "after the upgrade");
    drop((alice, bob));
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 0 clients, generation 4"));

    // --- a hung worker (SIGSTOP) is killed and replaced by the supervisor, not by systemd.
    let before = sb.workers();
    let (slot, hung, _) = before[0];
    sb.ok(&["kill", "-STOP", &hung.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let w = sb.workers();
        if w.len() == WORKERS && w.iter().any(|&(s, p, _)| s == slot && p != hung) {
            break w;
        }
        assert!(Instant::now() < deadline, "worker {hung} was not replaced: {w:?}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after.iter().find(|w| w.0 == slot).unwrap().2, 4, "{after:?}");
    assert_eq!(sb.prop("MainPID"), main_pid.to_string(), "systemd restarted the service");
    assert_eq!(sb.prop("NRestarts"), "0");
    assert_eq!(sb.prop("ActiveState"), "active");
    let (mut carol, carol_nick) = join(addr, "carol");
    chat(&mut [&mut carol], 0, &carol_nick, "after the hang");

    // --- the supervisor crashes: its clients are disconnected, systemd restarts the service.
    sb.ok(&["kill", "-KILL", &main_pid.to_string()]);
    let (lines, end) = carol.read_to_close(LINE_TIMEOUT);
    assert!(end.is_closed(), "carol's connection did not end: {end}, read {lines:?}");
    assert!(
        lines.iter().all(|l| l == "* server stopped unexpectedly, please reconnect"),
        "carol read {lines:?}"
    );
    note(&format!("supervisor SIGKILLed: the client read {lines:?} before {end}"));
    sb.wait_prop("NRestarts", "1");
    sb.wait_prop("ActiveState", "active");
    let new_main: u64 = sb.prop("MainPID").parse().unwrap();
    assert_ne!(new_main, main_pid);
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 0 clients, generation 1"));

    // --- stop: every client is told, then EOF; a clean exit.
    let mut clients: Vec<Client> = (0..3).map(|i| join(addr, &format!("stop{i}")).0).collect();
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 3 clients, generation 1"));
    sb.ok(&["systemctl", "stop", "chatd"]);
    for c in &mut clients {
        c.read_until(LINE_TIMEOUT, |l| l == "* server shutting down")
            .unwrap_or_else(|e| panic!("{}: no shutdown notice: {e}", c.label()));
        c.expect_eof();
    }
    assert_eq!(sb.prop("ActiveState"), "inactive");
    assert_eq!(sb.prop("Result"), "success");
    assert_eq!(sb.prop("ExecMainStatus"), "0");
    assert!(Client::try_connect(addr, "after stop").is_err(), "port {port} still accepts");

    // --- enable, then remove the package: it stops the service (clients told) and cleans up.
    sb.ok(&["systemctl", "enable", "--now", "chatd"]);
    assert_eq!(sb.prop("UnitFileState"), "enabled");
    let (mut dave, _) = join(addr, "dave");
    uninstall(&sb, &package);
    dave.read_until(LINE_TIMEOUT, |l| l == "* server shutting down")
        .unwrap_or_else(|e| panic!("dave: no shutdown notice on package removal: {e}"));
    dave.expect_eof();
    assert_eq!(sb.prop("LoadState"), "not-found");
    let left = sb.exec(&[
        "ls",
        "-d",
        "/usr/bin/chatd",
        "/etc/chatd",
        "/lib/systemd/system/chatd.service",
        "/etc/systemd/system/multi-user.target.wants/chatd.service",
        "/usr/lib/sysctl.d/60-chatd.conf",
    ]);
    assert_eq!(String::from_utf8_lossy(&left.stdout), "", "left behind after purge");
    note(&format!("end to end: {:?}", test_start.elapsed()));
}
