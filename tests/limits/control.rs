//! The control socket under stress: malformed requests, each one refused (and logged), the
//! server still running with the same workers and clients; and `chatd stop`, which must answer
//! every time and return only once the server is gone.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

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

    // SPEC §4: a malformed control frame is logged — each of them.
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

/// `chatd stop` on an idle server answers and returns once the server is gone (SPEC §3), every
/// time: the answer used to race the supervisor's exit and was lost most of the time. Half of
/// the rounds speak to the control socket directly, to check the connection's EOF comes only
/// with the server's exit.
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
