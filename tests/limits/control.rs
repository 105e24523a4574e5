//! Malformed requests on the control socket: each one refused (and logged), the server still
//! running with the same workers and clients.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

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
