//! Anything a client can ask for is answered in bounded frames and costs only the asker: a
//! history far bigger than a bus frame (asked for whole, and handed to new workers on reload),
//! and clients that flood `/who` into a big room without reading their answers.

use std::io::Write;
use std::time::Duration;

use crate::common::*;
use crate::raw_client::{RawClient, connect_from};
use crate::room::lines_until;

/// 20,000 lines of ~1,000 bytes (20 MB of history, over the 16 MiB frame limit): `/history
/// 100000` is answered with what fits the asker's backlog, and a reload hands the whole history
/// to the new workers in frames under the limit. No worker dies on the way.
#[test]
fn a_history_bigger_than_a_bus_frame_is_answered_and_survives_a_reload() {
    let server = ServerBuilder::new()
        .workers(2)
        .chat_key("history = 100000")
        .chat_key("rate_limit = { messages = 0 }")
        .start();
    let workers = server.wait_for_workers(2, START_TIMEOUT);
    let (mut talker, nick, _) = server.join("talker");
    let pad = "h".repeat(990);
    const LINES: usize = 20_000;
    const BATCH: usize = 500;
    let mut last = Vec::new();
    for batch in 0..LINES / BATCH {
        let mut bytes = String::new();
        for i in 0..BATCH {
            bytes += &format!("{:05} {pad}\n", batch * BATCH + i);
        }
        talker.send_raw(bytes.as_bytes()).expect("talker write");
        for i in 0..BATCH {
            let line = talker.expect_chat(&nick, &format!("{:05} {pad}", batch * BATCH + i));
            if batch * BATCH + i >= LINES - 3 {
                last.push(line);
            }
        }
    }
    let who = format!("* 1 online: {nick}");
    talker.send_line("/history 100000");
    talker.send_line("/who");
    let answer = lines_until(&mut talker, &who);
    // Half of the default 1 MiB backlog holds ~500 of these lines.
    let (head, lines) = answer.split_first().expect("an answer");
    assert!(
        head.starts_with("* only the last ") && head.ends_with(" of 20000 lines fit in one answer"),
        "{head}"
    );
    assert!(lines.len() > 400 && lines.len() < 600, "{} lines", lines.len());
    assert_eq!(lines[lines.len() - 3..], last[..]);
    assert_eq!(server.worker_pids(), workers, "no worker died");

    // New workers are given the whole history (and presence) by the hub.
    let out = server.run(&["reload"], Duration::from_secs(60));
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let new = server.wait_for_workers(2, START_TIMEOUT);
    assert!(new.iter().all(|p| !workers.contains(p)), "{workers:?} -> {new:?}");
    talker.send_line("/history 3");
    talker.send_line("/who");
    assert_eq!(lines_until(&mut talker, &who), last, "history after the reload");
    let (mut newcomer, _, n) = server.join("newcomer");
    assert_eq!(n, 2);
    // history_on_join (10) comes from the new worker's copy.
    let joined: Vec<String> = (0..10).map(|_| newcomer.next_line()).collect();
    assert_eq!(joined[7..], last[..]);
    assert!(!server.log_contains("bad frame length"), "{:?}", server.log_lines());
}

/// Clients flooding `/who` into a room of 1,000 (answers of ~10 KB each, 20 a second at the
/// default rate limit) without ever reading: each is cut as `too slow` by its own backlog; the
/// workers, the hub and everyone else carry on.
#[test]
fn who_flooders_that_never_read_are_cut_and_nobody_else() {
    let server = ServerBuilder::new()
        .workers(2)
        .chat_key("max_backlog_bytes = 65536")
        .raw("[socket]\nsend_buffer = 4096")
        .start();
    let workers = server.wait_for_workers(2, START_TIMEOUT);
    let (mut observer, observer_nick, _) = server.join("observer");
    let mut crowd = Vec::new();
    for i in 0..1000 {
        let mut c = server.connect(&format!("crowd{i}"));
        c.expect_welcome();
        crowd.push(c);
    }
    const FLOODERS: usize = 50;
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let mut raw = RawClient::new(connect_from(server.addr(), None, Some(4096)));
        let welcome = raw.next_line();
        let (nick, _) = parse_welcome(&welcome).unwrap_or_else(|| panic!("{welcome:?}"));
        flooders.push((raw, nick));
    }
    let mut nicks = Vec::new();
    for (raw, nick) in &mut flooders {
        // Far more requests than the rate limit lets through in the test's time; the server
        // reads them as the limit allows.
        let _ = raw.stream().write_all("/who\n".repeat(2000).as_bytes());
        nicks.push(nick.clone());
    }
    // Every flooder leaves as too slow (the observer reads the whole room meanwhile).
    let mut cut = 0;
    while cut < FLOODERS {
        let l = observer
            .read_line(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("observer, {cut} of {FLOODERS} flooders cut: {e}"));
        if let Some(nick) = l.strip_prefix("* ").and_then(|r| r.strip_suffix(" left (too slow)")) {
            assert!(nicks.iter().any(|n| n == nick), "{l}");
            cut += 1;
        } else {
            assert!(l.contains(" joined ("), "unexpected line {l:?}");
        }
    }
    assert_eq!(server.worker_pids(), workers, "no worker was killed");
    assert!(!server.log_contains("killing"), "{:?}", server.log_lines());
    // The rest of the room is intact and in one order.
    observer.send_line("still here");
    let line = observer.expect_chat(&observer_nick, "still here");
    for c in &mut crowd {
        let l = c.read_until(LINE_TIMEOUT, |l| l.ends_with(" still here")).unwrap_or_else(|e| {
            panic!("{}: {e}", c.label());
        });
        assert_eq!(l, line);
    }
    observer.send_line("/who");
    expect_line_prefix(&mut observer, "* 1001 online: ");
}

fn expect_line_prefix(c: &mut Client, prefix: &str) {
    let l = c.next_line();
    assert!(l.starts_with(prefix), "expected {prefix:?}…, got {l:?}");
}
