//! End-to-end tests of moderation and the audit log (docs/operations.md, "Moderation" and
//! "Audit log") against the real binary with two workers and clients on both: reserved nicks,
//! the connect / nick / disconnect log lines with the worker in their prefix, and the control
//! commands `who`, `say`, `kick`, `ban`, `unban`, `bans` with their lines and exit codes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::room::{Room, room_server};
use common::*;

/// How long a control command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// `chatd status --json`: each worker's slot and generation by pid.
fn worker_names(server: &Server) -> HashMap<i32, String> {
    let out = server.run(&["status", "--json"], CONTROL_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let workers = status["workers"].as_array().expect("workers");
    workers
        .iter()
        .map(|w| {
            let pid = w["pid"].as_i64().expect("pid") as i32;
            (pid, format!("worker {}/g{}", w["slot"], w["generation"]))
        })
        .collect()
}

/// The log line of the process named `who` that ends with `: WHAT`.
fn wait_for_audit(server: &Server, who: &str, what: &str) -> String {
    let line = server.wait_for_log(&format!("{who}: {what}"), LINE_TIMEOUT);
    assert!(line.ends_with(&format!("{who}: {what}")), "{line}");
    assert!(line.contains(" INFO "), "audit lines are info lines: {line}");
    line
}

#[test]
fn reserved_nicks_are_refused_case_insensitively() {
    let server = room_server(2).chat_key(r#"reserved_nicks = ["admin", "Ops-1"]"#).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    for nick in ["admin", "ADMIN", "ops-1"] {
        room.clients[a].send_line(&format!("/nick {nick}"));
        room.clients[a].expect_line(&format!("! nickname '{nick}' is reserved"));
    }
    // Nobody else saw anything; a free nick still works.
    room.clients[b].send_line("/nick administrator");
    room.expect_all(&format!("* {} is now known as administrator", room.nicks[b]));
}

#[test]
fn the_default_reserved_nicks_include_server() {
    let server = room_server(2).start();
    let (mut c, _, _) = server.join("c");
    c.send_line("/nick Server");
    c.expect_line("! nickname 'Server' is reserved");
}

#[test]
fn the_audit_log_names_the_worker_serving_each_client() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    let names = worker_names(&server);
    let owners = room.owners(&server);
    assert_ne!(names[&owners[a]], names[&owners[b]]);
    for i in [a, b] {
        let addr = room.clients[i].local_addr();
        wait_for_audit(
            &server,
            &names[&owners[i]],
            &format!("connect {addr} as {}", room.nicks[i]),
        );
    }
    let addr = room.clients[a].local_addr();
    let old = room.nicks[a].clone();
    room.clients[a].send_line("/nick alice");
    room.expect_all(&format!("* {old} is now known as alice"));
    room.nicks[a] = "alice".into();
    wait_for_audit(&server, &names[&owners[a]], &format!("nick {old} -> alice ({addr})"));
    room.clients[a].send_line("/quit gone fishing");
    room.clients[b].expect_line("* alice left (quit: gone fishing)");
    let who = &names[&owners[a]];
    let what = format!("{who}: disconnect alice {addr} (quit: gone fishing) after ");
    let line = server.wait_for_log(&what, LINE_TIMEOUT);
    let after = line.split(&what).nth(1).expect("duration");
    assert!(after.ends_with('s') && after.len() <= 6, "{line}");
    // Between the two, nobody else's connection was logged by the wrong worker.
    let other = &names[&owners[b]];
    assert!(!server.log_contains(&format!("{other}: disconnect alice")));
}

#[test]
fn the_audit_log_can_be_turned_off() {
    let server = room_server(2).raw("[log]\nconnections = false").start();
    let (mut c, nick, _) = server.join("c");
    c.send_line("/nick bob");
    c.expect_line(&format!("* {nick} is now known as bob"));
    c.send_line("/quit");
    c.expect_eof();
    // The supervisor's own line for a later event proves the log is not just behind.
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    server.wait_for_log_count("listening on", 2, LINE_TIMEOUT);
    for word in [": connect ", ": nick ", ": disconnect "] {
        assert!(!server.log_contains(word), "{word} logged with [log] connections = false");
    }
}
