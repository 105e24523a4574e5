//! Worker health seen from outside (docs/control.md, "Health"): a worker is blamed only for silence
//! of its own. Here the supervisor itself is stalled (SIGSTOP) for longer than the heartbeat
//! timeout while its workers go on heartbeating into the bus; once it runs again no worker may be
//! taken for hung: same worker pids, every client still connected and chatting.

mod common;

use std::thread;
use std::time::Duration;

use common::room::{Room, room_server};
use common::*;
use nix::sys::signal::Signal;

/// The worker pids of `chatd status --json`, sorted.
fn status_pids(server: &Server) -> Vec<i32> {
    let out = server.run(&["status", "--json"], LINE_TIMEOUT);
    assert!(out.status.success(), "chatd status --json: {}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let mut pids: Vec<i32> = v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["pid"].as_i64().expect("pid") as i32)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn a_stalled_supervisor_blames_no_worker() {
    let server = room_server(2).server_key("heartbeat_timeout = \"2s\"").start();
    let workers = server.wait_for_workers(2, START_TIMEOUT);
    let mut room = Room::spread(&server, 6);
    assert_eq!(status_pids(&server), workers);

    // The fault: the supervisor does not run for twice the heartbeat timeout.
    server.signal(Signal::SIGSTOP);
    thread::sleep(Duration::from_secs(4));
    server.signal(Signal::SIGCONT);

    // The chat goes through the supervisor after it has run its heartbeat check.
    room.chat(0, "after the stall");
    room.chat(5, "still here");
    assert_eq!(status_pids(&server), workers, "workers were replaced after the stall");
    assert_eq!(server.worker_pids(), workers);
    assert!(!server.log_contains("killing it"), "a worker was blamed for the stall");
}
