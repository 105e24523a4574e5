//! Every command of docs/protocol.md, "Commands", and its errors: `/nick`, `/who`, `/me`, `/msg`,
//! `/history`, `/help`, `/quit` (and a bare `quit`), unknown commands, and an unfinished last line
//! on close. Errors must reach the sender only, which the tests prove with a room-wide barrier.

use crate::common::*;
use crate::room::{Room, expect_timed, lines_until, room_server};

#[test]
fn nick_command() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    let c = (0..3).find(|&i| i != a && i != b).unwrap();
    let (old_a, old_b) = (room.nicks[a].clone(), room.nicks[b].clone());

    room.clients[a].send_line("/nick alice");
    room.expect_all(&format!("* {old_a} is now known as alice"));
    room.nicks[a] = "alice".into();

    // Taken, case-insensitively, by a client on another worker.
    room.clients[b].send_line("/nick ALICE");
    room.clients[b].expect_line("! nickname 'ALICE' is taken");
    // Command names are case-insensitive.
    room.clients[b].send_line("/NICK Bob");
    room.expect_all(&format!("* {old_b} is now known as Bob"));
    room.nicks[b] = "Bob".into();

    let ca = &mut room.clients[a];
    ca.send_line("/nick alice");
    ca.expect_line("* you are already alice");
    // Letters, but not ASCII ones: the error says which letters count.
    let long = "x".repeat(33);
    for bad in ["b@d", long.as_str(), "élan", "张三"] {
        ca.send_line(&format!("/nick {bad}"));
        ca.expect_line(&format!("! invalid nickname '{bad}' (1-32 ASCII letters, digits, _ or -)"));
    }
    ca.send_line("/nick");
    ca.expect_line("! usage: /nick NAME");
    ca.send_line("/nick a b");
    ca.expect_line("! usage: /nick NAME");
    ca.send_line("/nick   ");
    ca.expect_line("! usage: /nick NAME");
    // The errors went to a only.
    room.sync(a, "after the errors");

    // 32 characters of every allowed kind are fine.
    let max = "Aa0_-".repeat(6) + "Zz";
    assert_eq!(max.len(), 32);
    room.clients[c].send_line(&format!("/nick {max}"));
    let old_c = room.nicks[c].clone();
    room.expect_all(&format!("* {old_c} is now known as {max}"));
    room.nicks[c] = max;

    // Changing only the case of one's own nick is a rename, not "taken".
    room.clients[a].send_line("/nick Alice");
    room.expect_all("* alice is now known as Alice");
    room.nicks[a] = "Alice".into();
    room.chat(a, "new name in chat lines");

    // A released nick can be taken by someone else (across workers).
    room.clients[b].send_line("/nick robert");
    room.expect_all("* Bob is now known as robert");
    room.nicks[b] = "robert".into();
    room.clients[a].send_line("/nick bob");
    room.expect_all("* Alice is now known as bob");
    room.nicks[a] = "bob".into();
    room.clients[a].send_line("/who");
    let mut expected = room.nicks.clone();
    expected.sort_by_key(|n| n.to_ascii_lowercase());
    room.clients[a].expect_line(&format!("* 3 online: {}", expected.join(", ")));
}

#[test]
fn who_command() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    // Nicks whose case-insensitive order differs from the byte order.
    for (i, nick) in ["bob", "Zed", "alice"].iter().enumerate() {
        let old = room.nicks[i].clone();
        room.clients[i].send_line(&format!("/nick {nick}"));
        room.expect_all(&format!("* {old} is now known as {nick}"));
        room.nicks[i] = nick.to_string();
    }
    // Everyone, on every worker, sees the whole room.
    for i in 0..3 {
        room.clients[i].send_line(if i == 1 { "/WHO" } else { "/who" });
        room.clients[i].expect_line("* 3 online: alice, bob, Zed");
    }
    room.clients[0].send_line("/who x");
    room.clients[0].expect_line("! usage: /who");
    room.sync(0, "only bob saw that");

    // After someone leaves, /who shrinks.
    room.clients[1].send_line("/quit");
    for i in [0, 2] {
        room.clients[i].expect_line("* Zed left (quit)");
    }
    room.clients[2].send_line("/who");
    room.clients[2].expect_line("* 2 online: alice, bob");
}

#[test]
fn me_command() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    let nick_a = room.nicks[a].clone();
    let nick_b = room.nicks[b].clone();

    room.clients[a].send_line("/me waves");
    room.expect_timed_all(&format!("* {nick_a} waves"));
    room.clients[b].send_line("/ME jumps  twice");
    room.expect_timed_all(&format!("* {nick_b} jumps  twice"));

    room.clients[a].send_line("/me");
    room.clients[a].expect_line("! usage: /me ACTION");
    room.clients[a].send_line("/me   ");
    room.clients[a].expect_line("! usage: /me ACTION");
    room.sync(a, "errors stay private");
}

#[test]
fn msg_command() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    let nick_a = room.nicks[a].clone();
    let nick_b = room.nicks[b].clone();

    // To a client on another worker, nick given in another case.
    room.clients[a].send_line(&format!("/msg {} psst  hi", nick_b.to_ascii_uppercase()));
    expect_timed(&mut room.clients[b], &format!("[pm from {nick_a}] psst  hi"));
    expect_timed(&mut room.clients[a], &format!("[pm to {nick_b}] psst  hi"));
    // Nobody else saw it.
    room.sync(a, "after the pm");

    // Command name case-insensitive; the reply names the target as it is spelt.
    room.clients[b].send_line("/nick Bobby");
    room.expect_all(&format!("* {nick_b} is now known as Bobby"));
    room.nicks[b] = "Bobby".into();
    room.clients[a].send_line("/MSG bobby back at you");
    expect_timed(&mut room.clients[b], &format!("[pm from {nick_a}] back at you"));
    expect_timed(&mut room.clients[a], "[pm to Bobby] back at you");
    // And the other way round.
    room.clients[b].send_line(&format!("/msg {nick_a} reply"));
    expect_timed(&mut room.clients[a], "[pm from Bobby] reply");
    expect_timed(&mut room.clients[b], &format!("[pm to {nick_a}] reply"));
    room.sync(b, "after the replies");

    let ca = &mut room.clients[a];
    ca.send_line("/msg nobody hi");
    ca.expect_line("! no such nick 'nobody'");
    // The old nick is gone.
    ca.send_line(&format!("/msg {nick_b} hi"));
    ca.expect_line(&format!("! no such nick '{nick_b}'"));
    ca.send_line("/msg Bobby");
    ca.expect_line("! usage: /msg NICK TEXT");
    ca.send_line("/msg");
    ca.expect_line("! usage: /msg NICK TEXT");
    room.sync(a, "after the errors");
}

#[test]
fn history_command() {
    history_case(false);
}

/// The same with `history_events = "all"`: every room line is history.
#[test]
fn history_command_with_all_events() {
    history_case(true);
}

/// `/history` shows chat and `/me` lines (with `all`, every room line), oldest first, exactly as
/// they were shown.
fn history_case(all: bool) {
    let builder = room_server(2);
    let builder = if all { builder.chat_key(r#"history_events = "all""#) } else { builder };
    let server = builder.start();
    let mut room = Room::spread(&server, 2);
    let mut history = Vec::new();
    if all {
        // Client 0's view so far (join and leave notices of the others), preceded by its own
        // join notice, shown to nobody but a room line all the same.
        history.push(format!("* {} joined (1 online)", room.nicks[0]));
        history.extend(room.clients[0].transcript().iter().skip(1).cloned());
    }
    let notice = |history: &mut Vec<String>, line: String| {
        if all {
            history.push(line);
        }
    };

    history.push(room.chat(0, "one"));
    room.clients[1].send_line("/me two");
    let nick1 = room.nicks[1].clone();
    history.push(room.expect_timed_all(&format!("* {nick1} two")));
    history.push(room.chat(1, "three"));
    let old0 = room.nicks[0].clone();
    room.clients[0].send_line("/nick alice");
    let line = format!("* {old0} is now known as alice");
    room.expect_all(&line);
    notice(&mut history, line);
    room.nicks[0] = "alice".into();
    // Join and leave of a third client.
    let k = room.join_one(&server);
    notice(&mut history, format!("* {} joined (3 online)", room.nicks[k]));
    let left = room.nicks[k].clone();
    room.replace_last();
    notice(&mut history, format!("* {left} left (quit)"));
    // Private messages and errors are not room lines.
    room.clients[0].send_line(&format!("/msg {nick1} secret"));
    expect_timed(&mut room.clients[1], "[pm from alice] secret");
    expect_timed(&mut room.clients[0], &format!("[pm to {nick1}] secret"));
    room.clients[0].send_line("/bogus");
    room.clients[0].expect_line("! unknown command '/bogus' (try /help)");

    let who = format!("* 2 online: alice, {nick1}");
    let ask = |room: &mut Room, who_asks: usize, cmd: &str| -> Vec<String> {
        room.clients[who_asks].send_line(cmd);
        room.clients[who_asks].send_line("/who");
        lines_until(&mut room.clients[who_asks], &who)
    };
    // With every event kept, how many joins and leaves spreading the clients over the workers
    // took varies; the default answer is the last 20 lines either way.
    let default = history[history.len().saturating_sub(20)..].to_vec();
    assert_eq!(ask(&mut room, 0, "/history"), default, "/history with few lines");
    assert_eq!(ask(&mut room, 1, "/history 2"), history[history.len() - 2..], "/history 2");
    assert_eq!(ask(&mut room, 0, "/HISTORY 3"), history[history.len() - 3..], "/HISTORY 3");
    assert_eq!(ask(&mut room, 0, "/history 1"), history[history.len() - 1..], "/history 1");
    for bad in ["/history x", "/history 0", "/history -1", "/history 1 2", "/history 2.5"] {
        room.clients[0].send_line(bad);
        room.clients[0].expect_line("! usage: /history [N] (N ≥ 1)");
    }
    // The errors and replies went to the asker only.
    history.push(room.chat(0, "only alice saw her history"));

    // More than 20 lines: the default is the last 20; a large N gives everything kept.
    for i in 1..=25 {
        history.push(room.chat(1, &format!("m{i}")));
    }
    assert_eq!(ask(&mut room, 1, "/history"), history[history.len() - 20..], "default 20");
    assert_eq!(ask(&mut room, 0, "/history 1000000"), history, "/history 1000000");
    assert_eq!(
        ask(&mut room, 0, "/history 99999999999999999999999999"),
        history,
        "/history with an N that overflows"
    );
}

#[test]
fn history_is_capped_by_config_and_empty_history_is_said() {
    // history = 5: `/history 100` gives 5 lines.
    let server = room_server(2).chat_key("history = 5").start();
    let mut room = Room::spread(&server, 2);
    let mut shown = Vec::new();
    for i in 1..=8 {
        shown.push(room.chat(i % 2, &format!("line {i}")));
    }
    room.clients[0].send_line("/history 100");
    for l in &shown[3..] {
        room.clients[0].expect_line(l);
    }
    room.clients[0].send_line("/history");
    for l in &shown[3..] {
        room.clients[0].expect_line(l);
    }
    room.sync(0, "end");
    drop(room);
    drop(server);

    // history = 0: nothing is kept, and /history says so.
    let server = room_server(2).chat_key("history = 0").start();
    let mut room = Room::spread(&server, 2);
    room.chat(0, "not kept");
    room.clients[1].send_line("/history");
    room.clients[1].expect_line("* no history yet");
    room.clients[1].send_line("/history 5");
    room.clients[1].expect_line("* no history yet");
    room.sync(1, "end");
}

#[test]
fn help_command() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let nick0 = room.nicks[0].clone();
    let nick1 = room.nicks[1].clone();
    let mut sorted = [nick0.clone(), nick1.clone()];
    sorted.sort_by_key(|n| n.to_ascii_lowercase());
    let who = format!("* 2 online: {}", sorted.join(", "));

    for cmd in ["/help", "/HELP"] {
        room.clients[0].send_line(cmd);
        room.clients[0].send_line("/who");
        let help = lines_until(&mut room.clients[0], &who);
        assert!(help.len() >= 8, "{cmd}: expected a line per command, got {help:#?}");
        assert!(help.iter().all(|l| l.starts_with("* /")), "{cmd}: {help:#?}");
        for synopsis in [
            "* /nick NAME",
            "* /who",
            "* /me ACTION",
            "* /msg NICK TEXT",
            "* /history [N]",
            "* /help",
            "* /quit [REASON]",
            "* //",
        ] {
            assert!(
                help.iter().any(|l| l.starts_with(synopsis)),
                "{cmd}: no help line starting with {synopsis:?} in {help:#?}"
            );
        }
    }
    room.clients[0].send_line("/help me");
    room.clients[0].expect_line("! usage: /help");
    room.sync(0, "help is private");
}

#[test]
fn quit_command() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    // `quit` on its own leaves in any letter case, with spaces or tabs around it.
    let cases = [
        ("/quit", "quit"),
        ("quit", "quit"),
        ("QUIT", "quit"),
        (" Quit\t", "quit"),
        ("quit ", "quit"),
        ("/quit gone fishing", "quit: gone fishing"),
    ];
    for (line, reason) in cases {
        // A fresh client (on any worker) for each case; a and b (different workers) watch.
        let k = room.join_one(&server);
        let nick = room.nicks[k].clone();
        let mut c = room.clients.pop().unwrap();
        room.nicks.pop();
        c.send_line(line);
        room.expect_all(&format!("* {nick} left ({reason})"));
        let (lines, end) = c.read_to_close(LINE_TIMEOUT);
        assert!(lines.is_empty(), "{line:?}: the quitter read {lines:?} before EOF");
        assert!(matches!(end, ReadError::Eof), "{line:?}: expected EOF, got {end}");
    }
    // Anything more than `quit` (a non-ASCII space included) is chat.
    for line in ["quits", "quit.", "quit\u{a0}", "\u{3000}quit"] {
        room.chat(a, line);
    }
    // The original cross-worker pair quits too, one after the other.
    let nick_b = room.nicks[b].clone();
    room.clients[b].send_line("/Quit see you");
    room.clients[a].expect_line(&format!("* {nick_b} left (quit: see you)"));
    room.clients[b].expect_eof();
    room.clients[a].send_line("/who");
    room.clients[a].expect_line(&format!("* 1 online: {}", room.nicks[a]));
}

#[test]
fn unfinished_last_line_is_processed_on_close() {
    let server = room_server(3).start();
    let room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    let (nick_a, nick_b) = (room.nicks[a].clone(), room.nicks[b].clone());
    let mut clients: Vec<Option<Client>> = room.clients.into_iter().map(Some).collect();
    let mut ca = clients[a].take().unwrap();
    let mut cb = clients[b].take().unwrap();

    ca.send_raw(b"hello").unwrap();
    ca.shutdown_write();
    cb.expect_chat(&nick_a, "hello");
    cb.expect_line(&format!("* {nick_a} left (connection closed)"));
    // The closer still reads its own echo, then EOF.
    ca.expect_chat(&nick_a, "hello");
    ca.expect_eof();

    // Same with a trailing CR (dropped as if the LF had come), from a client on any worker.
    let (mut ck, nick_k, n) = server.join("k");
    assert_eq!(n, 2);
    cb.expect_line(&format!("* {nick_k} joined (2 online)"));
    ck.send_raw(b"bye\r").unwrap();
    ck.shutdown_write();
    cb.expect_chat(&nick_k, "bye");
    cb.expect_line(&format!("* {nick_k} left (connection closed)"));
    ck.expect_chat(&nick_k, "bye");
    ck.expect_eof();
    cb.send_line("/who");
    cb.expect_line(&format!("* 1 online: {nick_b}"));
}

#[test]
fn unknown_command() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let c = &mut room.clients[0];
    c.send_line("/foo");
    c.expect_line("! unknown command '/foo' (try /help)");
    c.send_line("/Foo bar baz");
    c.expect_line("! unknown command '/Foo' (try /help)");
    c.send_line("/nickname x");
    c.expect_line("! unknown command '/nickname' (try /help)");
    // Still connected, and nobody else saw anything.
    room.sync(0, "still here");
}

/// `/who` and `/history` come in their place in the room's order, after the effect of what the
/// asker sent just before, even when it all arrives in one burst.
#[test]
fn who_and_history_come_after_what_was_sent_before() {
    let server = room_server(2).start();
    let (mut c, nick, _) = server.join("burst");
    c.send_raw(b"/nick alice\n/who\nhello\n/history 1\n").expect("write");
    c.expect_line(&format!("* {nick} is now known as alice"));
    c.expect_line("* 1 online: alice");
    let hello = c.expect_chat("alice", "hello");
    c.expect_line(&hello);
}
