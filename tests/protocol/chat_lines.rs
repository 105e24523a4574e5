//! Room lines and who gets them: chat across workers, `echo = false`, the configurable chat line
//! (`message_format`, `time_format`, `{seq}`) and the history a joiner is shown.

use crate::common::*;
use crate::room::{Room, room_server, strip_time};

// ---------------------------------------------------------------------------------------------
// Chat lines, welcome, join
// ---------------------------------------------------------------------------------------------

#[test]
fn chat_reaches_everyone_across_workers() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);

    // The sender gets its own line too (echo = true), in the same place as everyone else.
    room.chat(a, "hello world");
    room.chat(b, "hi from the other worker");
    // `//text` says `/text`; a line not starting with `/` is chat, whatever it looks like.
    room.clients[b].send_line("//text");
    room.expect_chat_all(b, "/text");
    room.clients[a].send_line("//nick bob");
    room.expect_chat_all(a, "/nick bob");
    room.chat(a, "quit now");
    room.chat(b, " /nick not-a-command");
    room.chat(a, "tab\tinside and  two spaces");
    room.chat(b, "ünïcödé ✓ 日本");
    // The joiner never got its own join notice: its next line after the welcome was the chat
    // above (checked by `expect_chat_all` for every client, joiners included).
}

#[test]
fn echo_false_skips_only_the_sender() {
    let server = room_server(3).chat_key("echo = false").start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    room.clients[a].send_line("not echoed");
    let nick_a = room.nicks[a].clone();
    room.clients[b].expect_chat(&nick_a, "not echoed");
    // b answers; a's next line must be b's line: a never got its own.
    room.clients[b].send_line("answer");
    let nick_b = room.nicks[b].clone();
    room.clients[a].expect_chat(&nick_b, "answer");
}

// ---------------------------------------------------------------------------------------------
// Configurable chat line, history on join
// ---------------------------------------------------------------------------------------------

/// `HH:MM ` prefix check; returns the rest.
fn strip_hh_mm(line: &str) -> Option<&str> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    let ok = b.len() == 5 && b[2] == b':' && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit());
    ok.then_some(rest)
}

#[test]
fn seed_message_format_and_time_format() {
    let server = room_server(3)
        .chat_key(r#"message_format = "{time} From {addr}. msg={text}""#)
        .chat_key(r#"time_format = "%H:%M""#)
        .start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    for (from, text) in [(a, "hello"), (b, "hi back"), (a, "//slash")] {
        room.clients[from].send_line(text);
        let port = room.clients[from].local_port();
        let text = text.strip_prefix('/').unwrap_or(text);
        let want = format!("From 127.0.0.1:{port}. msg={text}");
        let mut lines = Vec::new();
        for c in &mut room.clients {
            let l = c.next_line();
            assert_eq!(strip_hh_mm(&l), Some(want.as_str()), "{}: got {l:?}", c.label());
            lines.push(l);
        }
        assert_eq!(lines[0], lines[1]);
    }
    // time_format applies to /me lines too.
    let nick_a = room.nicks[a].clone();
    room.clients[a].send_line("/me nods");
    for c in &mut room.clients {
        let l = c.next_line();
        assert_eq!(strip_hh_mm(&l), Some(format!("* {nick_a} nods").as_str()), "got {l:?}");
    }
}

#[test]
fn message_format_seq_numbers_every_room_event() {
    let server = room_server(3).chat_key(r#"message_format = "[{seq}] <{nick}> {text}""#).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    let seq_of = |room: &mut Room, from: usize, text: &str| -> u64 {
        room.clients[from].send_line(text);
        let want = format!("> {text}");
        let nick = room.nicks[from].clone();
        let lines: Vec<String> = room.clients.iter_mut().map(|c| c.next_line()).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "different lines: {lines:?}");
        let l = &lines[0];
        let n = l
            .strip_prefix('[')
            .and_then(|r| r.split_once("] <"))
            .filter(|(_, r)| r.starts_with(&nick) && r.ends_with(&want))
            .and_then(|(n, _)| n.parse::<u64>().ok());
        n.unwrap_or_else(|| panic!("expected `[SEQ] <{nick}> {text}`, got {l:?}"))
    };
    let s1 = seq_of(&mut room, a, "x");
    let s2 = seq_of(&mut room, b, "y");
    assert_eq!(s2, s1 + 1, "consecutive messages");
    // A /me, a nick change, a join and a leave are numbered too.
    let nick_b = room.nicks[b].clone();
    room.clients[b].send_line("/me blinks");
    room.expect_timed_all(&format!("* {nick_b} blinks"));
    room.clients[b].send_line("/nick bea");
    room.expect_all(&format!("* {nick_b} is now known as bea"));
    room.nicks[b] = "bea".into();
    room.join_one(&server);
    room.replace_last();
    // PMs and errors are not room events.
    room.clients[a].send_line("/msg bea psst");
    room.clients[a].send_line("/nope");
    let pm_from = room.clients[b].next_line();
    assert!(strip_time(&pm_from).is_some_and(|r| r.ends_with("] psst")), "{pm_from:?}");
    let mut replies = [room.clients[a].next_line(), room.clients[a].next_line()];
    replies.sort();
    assert_eq!(replies[0], "! unknown command '/nope' (try /help)", "{replies:?}");
    assert_eq!(strip_time(&replies[1]), Some("[pm to bea] psst"), "{replies:?}");
    let s3 = seq_of(&mut room, a, "z");
    assert_eq!(s3, s2 + 5, "/me, nick, join and leave take one number each");
}

#[test]
fn history_on_join() {
    let server = ServerBuilder::new()
        .workers(3)
        .chat_key("history_on_join = 3")
        .chat_key("rate_limit = { messages = 0 }")
        .start();
    // Joins are not history: the second client gets only its welcome too.
    let (mut a, nick_a, n) = server.join("a");
    assert_eq!(n, 1);
    let (mut b, nick_b, n) = server.join("b");
    assert_eq!(n, 2);
    a.expect_line(&format!("* {nick_b} joined (2 online)"));
    let mut shown = Vec::new();
    for i in 1..=4 {
        a.send_line(&format!("m{i}"));
        shown.push(a.expect_chat(&nick_a, &format!("m{i}")));
        b.expect_chat(&nick_a, &format!("m{i}"));
    }
    // A joiner (anywhere) gets its welcome, then exactly the last 3 room lines, then live lines.
    for k in 0..3 {
        let (mut c, nick_c, n) = server.join(&format!("joiner{k}"));
        assert_eq!(n, 3);
        for l in &shown[shown.len() - 3..] {
            c.expect_line(l);
        }
        let join = format!("* {nick_c} joined (3 online)");
        a.expect_line(&join);
        b.expect_line(&join);
        b.send_line("live");
        let live = c.expect_chat(&nick_b, "live");
        assert_eq!(a.expect_chat(&nick_b, "live"), live);
        assert_eq!(b.expect_chat(&nick_b, "live"), live);
        c.send_line("/quit");
        let left = format!("* {nick_c} left (quit)");
        a.expect_line(&left);
        b.expect_line(&left);
        c.expect_eof();
        shown.push(live);
    }
}

#[test]
fn history_on_join_default_is_ten() {
    let server = ServerBuilder::new().workers(2).chat_key("rate_limit = { messages = 0 }").start();
    let (mut a, nick_a, _) = server.join("a");
    let mut shown = Vec::new();
    for i in 1..=12 {
        a.send_line(&format!("line {i}"));
        shown.push(a.expect_chat(&nick_a, &format!("line {i}")));
    }
    let (mut b, nick_b, n) = server.join("b");
    assert_eq!(n, 2);
    for l in &shown[2..] {
        b.expect_line(l);
    }
    a.expect_line(&format!("* {nick_b} joined (2 online)"));
    a.send_line("now");
    b.expect_chat(&nick_a, "now");
}
