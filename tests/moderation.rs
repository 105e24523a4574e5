//! End-to-end tests of moderation and the audit log (docs/operations.md, "Moderation" and
//! "Audit log") against the real binary with two workers and clients on both: reserved nicks,
//! the connect / nick / disconnect log lines with the worker in their prefix, and the control
//! commands `who`, `say`, `kick`, `ban`, `unban`, `bans` with their lines and exit codes.

mod common;

use std::time::Duration;

use common::room::{Room, room_server};
use common::*;

/// How long a control command may take.
#[allow(dead_code)]
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

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
