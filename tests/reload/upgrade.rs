//! A binary upgrade on reload: the file the supervisor was started from is replaced on disk,
//! and the next reload starts every new worker from the new file while the supervisor keeps
//! running the old one. The test needs its own copy of the binary, hence [`OwnServer`], a
//! supervisor started from that copy rather than from the harness's `chatd`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::common::*;
use crate::control::*;
use crate::room::Room;
use crate::room_server;

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
        let sup = Pid::from_raw(self.pid());
        let _ = kill(sup, Signal::SIGSTOP);
        for pid in descendants(self.pid()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = killpg(sup, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("----- chatd log -----");
            for l in self.log.lock().unwrap().iter() {
                eprintln!("{l}");
            }
            eprintln!("----- end of chatd log -----");
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

/// The supervisor runs `DIR/bin/chatd`; the file is replaced (write a new file, rename over it)
/// by a different binary; a reload starts every new worker from the new file, while the
/// supervisor itself keeps running the old, now deleted, one. Sessions survive.
#[test]
fn binary_upgrade_on_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let exe = bin.join("chatd");
    fs::copy(CHATD, &exe).expect("copy chatd");
    let control = dir.path().join("control.sock");
    let config = dir.path().join("chatd.toml");
    fs::write(&config, room_server(3).render(&control)).unwrap();

    let server = OwnServer::start(&exe, &config);
    let st = wait_settled(&control, server.pid(), 3, 1, &[]);
    let old_ino = fs::metadata(&exe).unwrap().ino();
    assert_eq!(exe_inode(server.pid()), old_ino, "the supervisor runs DIR/bin/chatd");
    for &pid in &st.pids() {
        assert_eq!(exe_inode(pid), old_ino, "worker {pid} runs DIR/bin/chatd");
    }
    let mut room = Room::default();
    for _ in 0..8 {
        room.join_at(server.addr, "c");
    }
    room.chat(0, "before the upgrade");

    // The "new version": same code, different bytes (an ELF file runs with trailing bytes).
    let staged = bin.join(".chatd.new");
    let mut bytes = fs::read(&exe).unwrap();
    let old_len = bytes.len();
    bytes.extend_from_slice(b"\0chatd upgrade marker\0");
    fs::write(&staged, &bytes).unwrap();
    fs::set_permissions(&staged, fs::metadata(&exe).unwrap().permissions()).unwrap();
    fs::rename(&staged, &exe).expect("rename the new binary over the old");
    let new_meta = fs::metadata(&exe).unwrap();
    let new_ino = new_meta.ino();
    assert_ne!(new_ino, old_ino);
    assert_eq!(new_meta.len() as usize, old_len + 22);
    let mut v = Command::new(&exe);
    v.arg("--version").stdout(Stdio::piped());
    let version = spawn_retrying(&mut v).wait_with_output().expect("new binary runs");
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "chatd 0.1.0");

    let out = reload_at(&control);
    expect_reload_ok(&out, 2, 3);
    let after = wait_settled(&control, server.pid(), 3, 2, &st.pids());
    for &pid in &after.pids() {
        assert_eq!(exe_inode(pid), new_ino, "new worker {pid} does not run the new binary");
        let link = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(link, exe, "worker {pid}'s exe");
    }
    // The supervisor was not re-executed: it still runs the old file, now unlinked.
    assert_eq!(exe_inode(server.pid()), old_ino);
    let sup_link = fs::read_link(format!("/proc/{}/exe", server.pid())).unwrap();
    assert!(
        sup_link.to_string_lossy().ends_with(" (deleted)"),
        "supervisor exe link: {sup_link:?}"
    );
    assert_eq!(after.version, "0.1.0");

    // Sessions survived, served by the new binary's workers.
    let owners = room.owners(server.addr.port(), &after.pids());
    assert_eq!(owners.len(), 8);
    room.quiet_check(5, "after the upgrade");
    room.join_at(server.addr, "new");
    room.chat(8, "newcomer on the new binary");
}
