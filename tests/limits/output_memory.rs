//! A worker's memory for a client's output follows that client's backlog: a reader that is always
//! a little behind holds its backlog, not everything it was sent, and a client cut as too slow
//! gives its backlog back when it is cut, not when its connection finally closes.

use crate::common::*;
use crate::proc_usage::{open_fds, vm_rss_kib};
use crate::raw_client::{RawClient, connect_from};
use crate::room::room_server;

/// ~1 KB chat lines, numbered from `first`.
fn lines(first: usize, n: usize) -> String {
    let pad = "m".repeat(990);
    (first..first + n).map(|i| format!("{i:06} {pad}\n")).collect()
}

/// A reader kept ~400 KB behind the room (well under its 1 MiB `max_backlog_bytes`, far over
/// what the kernel buffers hold) while 20 MB go through it: its queue is never empty, and the
/// worker must still hold about its backlog only.
#[test]
fn a_reader_always_behind_costs_its_backlog_not_its_traffic() {
    let server =
        room_server(1).chat_key("echo = false").raw("[socket]\nsend_buffer = 4096").start();
    let worker = server.wait_for_workers(1, START_TIMEOUT)[0];
    let (mut talker, _, _) = server.join("talker");
    let mut reader = RawClient::new(connect_from(server.addr(), None, Some(4096)));
    let welcome = reader.next_line();
    assert!(parse_welcome(&welcome).is_some(), "{welcome:?}");
    let before = vm_rss_kib(worker);

    const LEAD: usize = 400;
    const ROUND: usize = 200;
    const ROUNDS: usize = 100;
    talker.send_raw(lines(0, LEAD).as_bytes()).expect("talker write");
    let mut peak = before;
    for round in 0..ROUNDS {
        talker.send_raw(lines(LEAD + round * ROUND, ROUND).as_bytes()).expect("talker write");
        // The reader takes one round's worth, so it stays LEAD lines behind.
        for i in round * ROUND..(round + 1) * ROUND {
            let line = reader.next_line();
            assert!(line.contains(&format!("> {i:06} m")), "line {i}: {line:.60}");
        }
        peak = peak.max(vm_rss_kib(worker));
    }
    assert!(
        peak < before + 8 * 1024,
        "worker VmRSS grew from {before} KiB to {peak} KiB for a reader ~400 KB behind"
    );
}

/// 30 clients that never read are each sent 1.5 MB: each is cut once its backlog passes 1 MiB,
/// then lingers up to 10 s with its notice unread. The worker's memory goes back down while they
/// linger, not only once they are gone.
#[test]
fn a_client_cut_as_too_slow_gives_its_backlog_back_at_once() {
    let server =
        room_server(1).chat_key("echo = false").raw("[socket]\nsend_buffer = 4096").start();
    let worker = server.wait_for_workers(1, START_TIMEOUT)[0];
    let (mut talker, _, _) = server.join("talker");
    let fds_before = open_fds(worker).len();
    const SILENT: usize = 30;
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let mut raw = RawClient::new(connect_from(server.addr(), None, Some(4096)));
        raw.next_line();
        silent.push(raw);
    }
    let before = vm_rss_kib(worker);
    talker.send_raw(lines(0, 1500).as_bytes()).expect("talker write");
    let clients = || -> Option<u64> {
        let out = server.run(&["status", "--json"], LINE_TIMEOUT);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["clients"].as_u64()
    };
    // A deadline, not a measure: on a loaded 2-core machine the 45 MB of fan-out and the cuts
    // can take well past a line's usual wait.
    wait_until(3 * LINE_TIMEOUT, "every silent client to be cut", || {
        (clients() == Some(1)).then_some(())
    });
    let (rss, fds) = wait_until(LINE_TIMEOUT, "the worker's memory to go back down", || {
        let rss = vm_rss_kib(worker);
        (rss < before + 16 * 1024).then(|| (rss, open_fds(worker).len()))
    });
    assert!(
        fds >= fds_before + SILENT,
        "VmRSS went back to {rss} KiB (from {before} KiB before) only once the cut clients were \
         gone ({fds} descriptors, {fds_before} before they connected)"
    );
    drop(silent);
}
