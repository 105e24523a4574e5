//! A hand-off that carries a lot of unsent output: clients that read nothing, a few of them owed
//! more than a bus frame holds and hundreds owed tens of KB, handed to the next generation
//! while the supervisor expects a heartbeat every `heartbeat_timeout` (2.5 s: the heartbeat
//! period is 1 s, and a loaded 2-core machine delays a process by more than a tenth of a
//! second now and then; a worker that handed tens of MB over in one go would still be late by
//! seconds). The old worker must stay responsive while it hands them over (no worker
//! killed as silent), every session must move (nobody told to reconnect, nobody lost), and
//! every client must then read everything it was owed, in order.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};

use crate::common::*;
use crate::control::*;
use crate::room_server;

/// Connects a client that reads nothing until told to; returns once the server has admitted it
/// (the talker read its join notice, `(N online)`).
fn join_silent(addr: SocketAddr, talker: &mut Client, online: usize) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
    let notice = format!("({online} online)");
    talker
        .read_until(LINE_TIMEOUT, |l| l.ends_with(&notice))
        .unwrap_or_else(|e| panic!("join notice {notice}: {e}"));
    stream
}

/// Reads lines up to and including the first that ends with `last`.
fn read_through(stream: &TcpStream, last: &str) -> io::Result<Vec<String>> {
    stream.set_read_timeout(Some(LINE_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| io::Error::new(e.kind(), format!("{e} after {} lines", lines.len())))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {} lines", lines.len()),
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        let done = line.ends_with(last);
        lines.push(line);
        if done {
            return Ok(lines);
        }
    }
}

/// Checks that a silent client's lines are its welcome, then join notices and the talker's
/// numbered lines `tag NNN …` (each tag's in order, `counts[tag]` of them), then the probe.
fn check_owed(i: usize, lines: &[String], bursts: &[(&str, usize)]) {
    let mut next = vec![0usize; bursts.len()];
    for l in &lines[1..lines.len() - 1] {
        if l.contains(" joined (") {
            continue;
        }
        let chat = parse_chat(l).unwrap_or_else(|| panic!("silent client {i}: odd line {l:.60}"));
        let (tag, rest) = chat.text.split_once(' ').expect("tagged line");
        let b = bursts.iter().position(|(t, _)| *t == tag).expect("known tag");
        let n: usize = rest[..4].parse().expect("numbered line");
        assert_eq!(n, next[b], "silent client {i}: burst {tag}: lost, repeated or reordered");
        next[b] += 1;
    }
    for (b, (tag, count)) in bursts.iter().enumerate() {
        assert!(next[b] == 0 || next[b] == *count, "silent client {i}: burst {tag}: {next:?}");
    }
}

/// Two clients owed ~25 MB each (more than one bus frame may carry) and 300 owed ~150 KB each,
/// all on one worker, handed over with `heartbeat_timeout = "2500ms"`.
#[test]
fn handing_over_big_backlogs_keeps_the_worker_alive() {
    const BIG: usize = 2;
    const SMALL: usize = 300;
    const BIG_LINES: usize = 400;
    const SMALL_LINES: usize = 150;
    let server = room_server(1)
        .server_key(r#"heartbeat_timeout = "2500ms""#)
        .chat_key("max_line_bytes = 65536")
        .chat_key("max_backlog_bytes = 67108864")
        .chat_key("history = 10")
        .raw("[socket]\nsend_buffer = 4096")
        .start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 1, 1, &[]);
    let (mut talker, nick, _) = server.join("talker");
    let mut silent = Vec::new();
    let burst = |talker: &mut Client, tag: &str, lines: usize, size: usize| {
        let pad = "x".repeat(size);
        let text: String = (0..lines).map(|i| format!("{tag} {i:04} {pad}\n")).collect();
        talker.send_raw(text.as_bytes()).expect("talker write");
        let last = format!("{tag} {:04} {pad}", lines - 1);
        talker.read_until(LINE_TIMEOUT, |l| l.ends_with(&last)).expect("the talker's own lines");
    };
    for _ in 0..BIG {
        silent.push(join_silent(server.addr(), &mut talker, silent.len() + 2));
    }
    burst(&mut talker, "big", BIG_LINES, 64_000);
    for _ in 0..SMALL {
        silent.push(join_silent(server.addr(), &mut talker, silent.len() + 2));
    }
    burst(&mut talker, "small", SMALL_LINES, 1000);

    let out = reload_at(&control);
    expect_reload_ok(&out, 2, 1);
    let after = wait_settled(&control, server.pid(), 1, 2, &st.pids());
    assert_eq!(after.clients, (1 + BIG + SMALL) as u64, "every session handed over: {after:?}");
    let silent_for: Vec<String> =
        server.log_lines().into_iter().filter(|l| l.contains("silent for")).collect();
    assert!(silent_for.is_empty(), "a worker was taken for hung: {silent_for:?}");

    // Nobody left: the talker's next line is its own probe, and every silent client reads its
    // whole backlog, in order, then the probe.
    let probe = "probe after the reload";
    talker.send_line(probe);
    talker.expect_chat(&nick, probe);
    let bursts = [("big", BIG_LINES), ("small", SMALL_LINES)];
    for (i, stream) in silent.iter().enumerate() {
        let lines =
            read_through(stream, probe).unwrap_or_else(|e| panic!("silent client {i}: {e}"));
        check_owed(i, &lines, &bursts);
        let chats = lines.iter().filter(|l| l.contains(" big ") || l.contains(" small ")).count();
        let owed = if i < BIG { BIG_LINES + SMALL_LINES } else { SMALL_LINES };
        assert_eq!(chats, owed, "silent client {i}: lines read");
    }
    talker.send_line("and the room goes on");
    talker.expect_chat(&nick, "and the room goes on");
}
