//! The control socket under stress: malformed requests, each one refused (and logged), the
//! server still running with the same workers and clients; `chatd stop`, which must answer
//! every time and return only once the server is gone; and the other way round, a control
//! socket served by a stranger is refused by `chatd reload|status|stop`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, Uid, User, fork};

use crate::common::*;
use crate::room::room_server;

/// Sends `request` on a fresh control connection (then half-closes) and returns the reply
/// line, `None` if the server closed without one.
fn control_raw(server: &Server, request: &[u8]) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(server.control_socket()).expect("connect control socket");
    s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(LINE_TIMEOUT)).unwrap();
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    match s.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("control reply to {request:?}: {e}"),
    }
    if reply.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.ends_with('\n') && text.lines().count() == 1, "one reply line: {text:?}");
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("reply {text:?} is not JSON: {e}"));
    Some(v)
}

#[test]
fn malformed_control_requests_are_refused_and_the_server_keeps_running() {
    let server = room_server(2).start();
    let workers = server.wait_for_workers(2, START_TIMEOUT);
    let (mut a, nick_a, _) = server.join("a");

    let garbage: Vec<Vec<u8>> = vec![
        b"bogus\n".to_vec(),
        b"STATUS please\n".to_vec(),
        b"\xff\x00\x13\x37binary\n".to_vec(),
        b"{\"cmd\":\"status\"}\n".to_vec(),
        vec![b'x'; 8192],
    ];
    for g in &garbage {
        let reply = control_raw(&server, g)
            .unwrap_or_else(|| panic!("no reply to the malformed request {g:?}"));
        assert_eq!(reply["ok"], serde_json::Value::Bool(false), "reply to {g:?}: {reply}");
    }
    // A connection that closes without a request: no reply, or a refusal; nothing else.
    if let Some(reply) = control_raw(&server, b"") {
        assert_eq!(reply["ok"], serde_json::Value::Bool(false), "reply to nothing: {reply}");
    }

    // Still running, same processes: status works, clients chat.
    let out = server.run(&["status", "--json"], LINE_TIMEOUT);
    assert!(out.status.success(), "status after garbage: {}", output_text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", output_text(&out)));
    assert_eq!(status["clients"], 1, "{status}");
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(2), "{status}");
    let ok = control_raw(&server, b"status\n").expect("a reply to status");
    assert_eq!(ok["ok"], serde_json::Value::Bool(true), "{ok}");
    assert_eq!(server.worker_pids(), workers, "workers were replaced");
    assert!(process_alive(server.pid()), "the supervisor exited");
    a.send_line("still chatting");
    a.expect_chat(&nick_a, "still chatting");

    // docs/control.md, "The control socket": a malformed request is logged — each of them.
    server.wait_for_log("bogus", LINE_TIMEOUT);
    let logged: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("control"))
        .collect();
    assert!(
        logged.len() >= garbage.len(),
        "{} malformed control requests, {} logged: {logged:#?}",
        garbage.len(),
        logged.len()
    );
}

/// `chatd stop` on an idle server answers and returns once the server is gone (docs/control.md,
/// "Commands"), every time: the answer used to race the supervisor's exit and was lost most of the
/// time. Half of the rounds speak to the control socket directly, to check the connection's EOF
/// comes only with the server's exit.
#[test]
fn stop_answers_and_returns_once_the_server_exited() {
    for round in 0..20 {
        let mut server = room_server(2).start();
        server.wait_for_workers(2, START_TIMEOUT);
        if round % 2 == 0 {
            let out = server.run(&["stop"], LINE_TIMEOUT);
            assert!(out.status.success(), "round {round}: chatd stop: {}", output_text(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped", "round {round}");
        } else {
            let mut s = UnixStream::connect(server.control_socket()).expect("connect");
            s.set_read_timeout(Some(START_TIMEOUT)).unwrap();
            s.write_all(b"stop\n").expect("send stop");
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).expect("the answer, then EOF");
            let text = String::from_utf8_lossy(&reply);
            let v: serde_json::Value = serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("round {round}: answer {text:?}: {e}"));
            assert_eq!(v["ok"], serde_json::Value::Bool(true), "round {round}: {v}");
        }
        // Gone already: the answer is written after the workers exited and the connection closes
        // with the process. The short bound only covers the kernel's last step of the exit.
        let status = server.wait_exit(Duration::from_secs(2));
        assert!(status.success(), "round {round}: the server exited with {status}");
    }
}

/// A control socket answered by a process of another user (`nobody`), as someone could leave
/// in /tmp for a server that is not running: it answers every request with `{"ok":true}`.
struct Squatter {
    pid: Pid,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Squatter {
    /// `None` when this test cannot run a process as another user (not root).
    fn start() -> Option<Squatter> {
        if !Uid::effective().is_root() {
            return None;
        }
        let (uid, gid) = match User::from_name("nobody") {
            Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
            _ => (65534, 65534),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("control.sock");
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .expect("socket");
        bind(fd.as_raw_fd(), &UnixAddr::new(&path).expect("socket path")).expect("bind");
        let (ready_rx, ready_tx) = nix::unistd::pipe().expect("pipe");
        let reply = b"{\"ok\":true,\"message\":\"all is well\"}\n";
        // SAFETY: the test binary has other threads, so the child only makes raw system calls
        // (no allocation, no locks) until it exits; everything it uses was prepared above.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => unsafe {
                // Credentials first: the client sees those the socket had when it began to listen.
                if libc::syscall(libc::SYS_setgid, gid) != 0
                    || libc::syscall(libc::SYS_setuid, uid) != 0
                    || libc::listen(fd.as_raw_fd(), 8) != 0
                {
                    libc::_exit(1);
                }
                libc::write(ready_tx.as_raw_fd(), b"r".as_ptr().cast(), 1);
                loop {
                    let client =
                        libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut());
                    if client < 0 {
                        continue;
                    }
                    let mut request = [0u8; 256];
                    libc::read(client, request.as_mut_ptr().cast(), request.len());
                    libc::send(client, reply.as_ptr().cast(), reply.len(), libc::MSG_NOSIGNAL);
                    libc::close(client);
                }
            },
            ForkResult::Parent { child } => {
                drop(ready_tx);
                let squatter = Squatter { pid: child, path, _dir: dir };
                let mut ready = [0u8; 1];
                let mut fds = [PollFd::new(ready_rx.as_fd(), PollFlags::POLLIN)];
                let polled = poll(&mut fds, PollTimeout::from(20_000u16)).expect("poll");
                assert!(
                    polled == 1 && nix::unistd::read(&ready_rx, &mut ready) == Ok(1),
                    "the fake server did not start"
                );
                Some(squatter)
            }
        }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

#[test]
fn control_commands_refuse_a_server_run_by_another_user() {
    let Some(squatter) = Squatter::start() else {
        eprintln!("skipped: running a fake server as another user needs root");
        return;
    };
    let control = squatter.path.to_str().expect("utf-8 temp path");
    for command in ["status", "reload", "stop"] {
        let out = run_chatd(&[command, "--control", control], LINE_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "chatd {command}: {}", output_text(&out));
        assert!(out.stdout.is_empty(), "chatd {command} believed the fake: {}", output_text(&out));
        assert!(
            stderr.contains(&format!("refusing to talk to {control}: it is served by uid ")),
            "chatd {command}: {stderr:?}"
        );
    }
    // It was the fake server that answered, and it is still there: chatd only refused it.
    let mut s = UnixStream::connect(&squatter.path).expect("connect to the fake server");
    s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    s.write_all(b"status\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply of the fake server");
    assert!(reply.starts_with("{\"ok\":true"), "{reply:?}");
}
