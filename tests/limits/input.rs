//! Limits on what a client sends: overlong lines (refused with one error, the next line works),
//! a 10 MB line that must not grow the worker's memory, and a flood that the rate limit slows
//! down by back-pressure without dropping a line or delaying anyone else.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::proc_usage::vm_rss_kib;
use crate::room::{Room, room_server};

// ---------------------------------------------------------------------------------------------
// Overlong lines
// ---------------------------------------------------------------------------------------------

#[test]
fn line_too_long() {
    let server = room_server(3).chat_key("max_line_bytes = 16").start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = (0, 1);
    let nick_a = room.nicks[a].clone();
    let err = "! line too long (max 16 bytes)";

    // Exactly at the limit is fine, with LF or CRLF (CR/LF are not counted); so are 16 bytes
    // of multi-byte UTF-8.
    room.chat(a, &"x".repeat(16));
    room.clients[a].send_raw(format!("{}\r\n", "y".repeat(16)).as_bytes()).unwrap();
    let want = "y".repeat(16);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, &want);
    }
    room.chat(a, &"é".repeat(8));

    // One byte over: one error, to the sender only; the next line works.
    let cases: Vec<Vec<u8>> = vec![
        format!("{}\n", "z".repeat(17)).into_bytes(),
        format!("{}\r\n", "é".repeat(9)).into_bytes(),
        format!("{}\n", "w".repeat(5000)).into_bytes(),
    ];
    for raw in &cases {
        room.clients[a].send_raw(raw).unwrap();
        room.clients[a].expect_line(err);
        room.chat(a, "next");
    }
    // Overlong line in many pieces, then a good line in the same write as its end.
    for _ in 0..40 {
        room.clients[a].send_raw(&[b'p'; 100]).unwrap();
    }
    room.clients[a].send_raw(b"ppp\nafter pieces\n").unwrap();
    room.clients[a].expect_line(err);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, "after pieces");
    }
    // Two overlong lines back to back: two errors (one per line).
    room.clients[a].send_raw(format!("{0}\n{0}\nok\n", "q".repeat(20)).as_bytes()).unwrap();
    room.clients[a].expect_line(err);
    room.clients[a].expect_line(err);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, "ok");
    }
    // b, on another worker than a or not, never saw an error or a fragment: its lines so far
    // are exactly the chat lines above.
    let bad: Vec<&String> =
        room.clients[b].transcript().iter().filter(|l| l.starts_with('!')).collect();
    assert!(bad.is_empty(), "b saw errors: {bad:?}");
}

#[test]
fn ten_megabyte_line_keeps_worker_memory_bounded() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let nick_a = room.nicks[0].clone();
    let worker = room.owners(&server)[0];
    let before = vm_rss_kib(worker);

    let mut writer = room.clients[0].writer();
    writer.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let sender = thread::spawn(move || {
        let chunk = vec![b'A'; 64 * 1024];
        let mut sent = 0usize;
        let r = (|| {
            while sent < 10 * 1024 * 1024 {
                writer.write_all(&chunk)?;
                sent += chunk.len();
            }
            Ok::<_, io::Error>(())
        })();
        done2.store(true, Ordering::SeqCst);
        r.map(|()| sent)
    });
    // Sample the worker's memory while the line streams in.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "sending 10 MB took more than 60 s");
        peak = peak.max(vm_rss_kib(worker));
        thread::sleep(Duration::from_millis(2)); // sampling interval
    }
    let sent = sender.join().unwrap().expect("the server must keep reading the long line");
    assert_eq!(sent, 10 * 1024 * 1024);
    peak = peak.max(vm_rss_kib(worker));
    assert!(
        peak < before + 20 * 1024,
        "worker VmRSS grew from {before} KiB to {peak} KiB while receiving a 10 MB line"
    );

    // Exactly one error, and after the LF the client chats normally.
    room.clients[0].send_raw(b"\n").unwrap();
    room.clients[0].expect_line("! line too long (max 1024 bytes)");
    room.clients[0].send_line("after the flood");
    room.clients[0].expect_chat(&nick_a, "after the flood");
    room.clients[1].expect_chat(&nick_a, "after the flood");
    assert!(process_alive(worker), "the worker died");
    assert!(server.worker_pids().contains(&worker), "the worker was replaced");
    eprintln!("worker VmRSS {before} KiB before, peak {peak} KiB during the 10 MB line");
}

// ---------------------------------------------------------------------------------------------
// Rate limit: back-pressure, nothing dropped, others not queued behind the flood
// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limit_throttles_a_flood_without_dropping_it() {
    let server = ServerBuilder::new()
        .workers(3)
        .chat_key("history_on_join = 0")
        .chat_key(r#"rate_limit = { messages = 20, per = "1s", burst = 5 }"#)
        .start();
    let mut room = Room::spread(&server, 3);
    let owners = room.owners(&server);
    // Flooder and observer on different workers; the normal client is the third one.
    let (f, o) = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .find(|&(i, j)| i != j && owners[i] != owners[j])
        .unwrap();
    let n = 3 - f - o;
    let nick_f = room.nicks[f].clone();
    let nick_n = room.nicks[n].clone();

    const FLOOD: usize = 100;
    let flood: Vec<String> = (1..=FLOOD).map(|i| format!("flood-{i:03}")).collect();
    let mut bytes = Vec::new();
    for l in &flood {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    let start = Instant::now();
    room.clients[f].send_raw(&bytes).unwrap();

    // The observer reads the flood in order; after flood-010 the normal client says something,
    // which must not wait behind the rest of the flood.
    let mut seen = Vec::new();
    let mut normal_at = None;
    let mut normal_sent = None;
    while seen.len() < FLOOD {
        let l = room.clients[o].next_line();
        let c = parse_chat(&l).unwrap_or_else(|| panic!("observer: unexpected line {l:?}"));
        if c.nick == nick_n && c.text == "normal message" {
            normal_at = Some((seen.len(), normal_sent.map(|t: Instant| t.elapsed())));
            continue;
        }
        assert_eq!(c.nick, nick_f, "observer: unexpected line {l:?}");
        assert_eq!(c.text, flood[seen.len()], "observer: flood out of order or lost");
        seen.push(c.text);
        if seen.len() == 10 {
            room.clients[n].send_line("normal message");
            normal_sent = Some(Instant::now());
        }
    }
    let elapsed = start.elapsed();
    let (flood_before, delay) =
        normal_at.expect("the normal client's message never arrived during the flood");
    eprintln!(
        "flood of {FLOOD} took {elapsed:?}; normal message arrived after {flood_before} flood \
         lines, {delay:?} after it was sent"
    );
    assert!(
        flood_before < 60,
        "the normal message came after {flood_before} flood lines: queued behind the flood"
    );
    // 5 at once, then 20 per second: 95 more lines take ≥ 4.75 s. Less means no throttling.
    assert!(elapsed >= Duration::from_millis(3500), "flood not throttled: {elapsed:?}");
    assert!(elapsed <= Duration::from_secs(20), "flood too slow: {elapsed:?}");

    // Everyone saw the same order; the flooder got every one of its lines back.
    let reference: Vec<String> =
        room.clients[o].transcript()[room.clients[o].transcript().len() - (FLOOD + 1)..].to_vec();
    for i in [f, n] {
        let got: Vec<String> = (0..=FLOOD).map(|_| room.clients[i].next_line()).collect();
        assert_eq!(got, reference, "client {i} saw another order than the observer");
    }
    // The flooder was not cut off.
    room.chat(f, "still here");
}
