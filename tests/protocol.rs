//! End-to-end tests of the line protocol (SPEC §2, §4.1): every command and its errors, the
//! configurable chat line, history, joining, and input sanitising — against the real binary,
//! with clients spread over several worker processes wherever the room is involved.

mod common;

use std::collections::HashSet;

use common::*;

/// A room server: no history on join (a client's first line is its welcome, unless a test
/// asks for history), no rate limit (tests send bursts of commands).
fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}

/// Clients of one room, in join order, with their current nicks.
#[derive(Default)]
struct Room {
    clients: Vec<Client>,
    nicks: Vec<String>,
}

impl Room {
    /// Connects one client: it must get a welcome with the exact online count and a fresh nick,
    /// and every client already in the room must read its join notice as its next line.
    fn join_one(&mut self, server: &Server) -> usize {
        let i = self.clients.len();
        let (c, nick, count) = server.join(&format!("c{i}"));
        assert_eq!(count, i + 1, "{nick}: online count in the welcome line");
        assert!(!self.nicks.contains(&nick), "nick {nick} given twice: {:?}", self.nicks);
        let notice = format!("* {nick} joined ({} online)", i + 1);
        for other in &mut self.clients {
            other.expect_line(&notice);
        }
        self.clients.push(c);
        self.nicks.push(nick);
        i
    }

    /// `n` clients served by at least two different workers: the last one is replaced (it
    /// quits, the others see it leave) until the room spans two workers.
    fn spread(server: &Server, n: usize) -> Room {
        assert!(n >= 2);
        let mut room = Room::default();
        for _ in 0..n {
            room.join_one(server);
        }
        for _ in 0..30 {
            if room.owners(server).iter().collect::<HashSet<_>>().len() >= 2 {
                return room;
            }
            room.replace_last();
            room.join_one(server);
        }
        panic!("30 reconnections never put {n} clients on two different workers");
    }

    /// The last client quits; everyone else must read its leave notice; it must read EOF.
    fn replace_last(&mut self) {
        let mut c = self.clients.pop().unwrap();
        let nick = self.nicks.pop().unwrap();
        c.send_line("/quit");
        let notice = format!("* {nick} left (quit)");
        self.expect_all(&notice);
        let (_, end) = c.read_to_close(LINE_TIMEOUT);
        assert!(matches!(end, ReadError::Eof), "{nick} after /quit: expected EOF, got {end}");
    }

    /// Which worker serves each client.
    fn owners(&self, server: &Server) -> Vec<i32> {
        let workers = server.worker_pids();
        let ports: Vec<u16> = self.clients.iter().map(Client::local_port).collect();
        workers_of(&ports, server.port(), &workers)
            .into_iter()
            .zip(&self.nicks)
            .map(|(o, nick)| o.unwrap_or_else(|| panic!("no worker holds {nick}'s connection")))
            .collect()
    }

    /// Two clients served by different workers (the room must have been `spread`).
    fn cross_pair(&self, server: &Server) -> (usize, usize) {
        let owners = self.owners(server);
        for i in 0..owners.len() {
            for j in i + 1..owners.len() {
                if owners[i] != owners[j] {
                    return (i, j);
                }
            }
        }
        panic!("all clients on one worker: {owners:?}");
    }

    /// Every client's next line must be exactly `line`.
    fn expect_all(&mut self, line: &str) {
        for c in &mut self.clients {
            c.expect_line(line);
        }
    }

    /// `from` says `text`; every client's next line must be that chat line, the same for all.
    fn chat(&mut self, from: usize, text: &str) -> String {
        self.clients[from].send_line(text);
        self.expect_chat_all(from, text)
    }

    /// Every client's next line must be `from`'s chat line with `text` (same line for all).
    fn expect_chat_all(&mut self, from: usize, text: &str) -> String {
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }

    /// Every client's next line must be `HH:MM:SS rest` (same line for all); returns it.
    fn expect_timed_all(&mut self, rest: &str) -> String {
        let lines: Vec<String> = self.clients.iter_mut().map(|c| expect_timed(c, rest)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }

    /// A barrier: `from` says `tag` and every client's next line must be it. Since `from`'s
    /// requests reach the hub in order and the hub's output reaches each worker in order, this
    /// proves that nothing `from` did before reached anyone else (and nothing is pending).
    fn sync(&mut self, from: usize, tag: &str) {
        self.chat(from, tag);
    }
}

/// `HH:MM:SS ` prefix check; returns the rest of the line.
fn strip_time(line: &str) -> Option<&str> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    let ok = b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit());
    ok.then_some(rest)
}

/// The next line must be `HH:MM:SS rest`; returns the whole line.
fn expect_timed(c: &mut Client, rest: &str) -> String {
    let l = c.next_line();
    assert_eq!(
        strip_time(&l),
        Some(rest),
        "{}: expected `HH:MM:SS {rest}`, got {l:?}; transcript tail: {:?}",
        c.label(),
        tail(c)
    );
    l
}

fn tail(c: &Client) -> &[String] {
    let t = c.transcript();
    &t[t.len().saturating_sub(8)..]
}

/// Reads lines until `marker` (exclusive) and returns them; the marker must come within the
/// deadline. Used to collect a variable number of lines (help, history) before a known reply.
fn lines_until(c: &mut Client, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let l = c.next_line();
        if l == marker {
            return out;
        }
        out.push(l);
    }
}

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
// Commands
// ---------------------------------------------------------------------------------------------

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
    ca.send_line("/nick b@d");
    ca.expect_line("! invalid nickname 'b@d' (1-32 letters, digits, _ or -)");
    let long = "x".repeat(33);
    ca.send_line(&format!("/nick {long}"));
    ca.expect_line(&format!("! invalid nickname '{long}' (1-32 letters, digits, _ or -)"));
    ca.send_line("/nick élan");
    ca.expect_line("! invalid nickname 'élan' (1-32 letters, digits, _ or -)");
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
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    // Room lines as they were shown, oldest first: client 0's view so far (join and leave
    // notices of the others), preceded by its own join notice, shown to nobody but a room line
    // all the same.
    let first = format!("* {} joined (1 online)", room.nicks[0]);
    let mut history = vec![first];
    history.extend(room.clients[0].transcript().iter().skip(1).cloned());

    history.push(room.chat(0, "one"));
    room.clients[1].send_line("/me two");
    let nick1 = room.nicks[1].clone();
    history.push(room.expect_timed_all(&format!("* {nick1} two")));
    let old0 = room.nicks[0].clone();
    room.clients[0].send_line("/nick alice");
    let line = format!("* {old0} is now known as alice");
    room.expect_all(&line);
    history.push(line);
    room.nicks[0] = "alice".into();
    // Join and leave of a third client.
    let k = room.join_one(&server);
    history.push(format!("* {} joined (3 online)", room.nicks[k]));
    let left = room.nicks[k].clone();
    room.replace_last();
    history.push(format!("* {left} left (quit)"));
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
    assert!(history.len() < 20);
    assert_eq!(ask(&mut room, 0, "/history"), history, "/history with few lines");
    assert_eq!(ask(&mut room, 1, "/history 2"), history[history.len() - 2..], "/history 2");
    assert_eq!(ask(&mut room, 0, "/HISTORY 3"), history[history.len() - 3..], "/HISTORY 3");
    assert_eq!(ask(&mut room, 0, "/history 1"), history[history.len() - 1..], "/history 1");
    for bad in ["/history x", "/history 0", "/history -1", "/history 1 2", "/history 2.5"] {
        room.clients[0].send_line(bad);
        room.clients[0].expect_line("! usage: /history [N]");
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
    let cases = [("/quit", "quit"), ("quit", "quit"), ("/quit gone fishing", "quit: gone fishing")];
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
    // The first client gets only its welcome; the second gets the one room line there is
    // (the first client's join notice), then nothing else.
    let (mut a, nick_a, n) = server.join("a");
    assert_eq!(n, 1);
    let (mut b, nick_b, n) = server.join("b");
    assert_eq!(n, 2);
    b.expect_line(&format!("* {nick_a} joined (1 online)"));
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
        shown.extend([join, live, left]);
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

// ---------------------------------------------------------------------------------------------
// Input handling and sanitising
// ---------------------------------------------------------------------------------------------

#[test]
fn input_line_endings_telnet_utf8_and_blank_lines() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    // (raw bytes sent by a, the texts everyone must then see, in order)
    let cases: &[(&[u8], &[&str])] = &[
        (b"crlf line\r\n", &["crlf line"]),
        (b"lf line\n", &["lf line"]),
        (b"one\ntwo\r\nthree\n", &["one", "two", "three"]),
        (b"\xff\xfb\x01hi\xff\xfd\x03\r\n", &["hi"]),
        // Telnet subnegotiation, then IAC IAC (a literal 0xFF byte, invalid UTF-8).
        (b"\xff\xfa\x18\x00xterm\xff\xf0sub\r\n", &["sub"]),
        (b"a\xff\xffb\n", &["a\u{FFFD}b"]),
        (b"caf\xe9 au lait\n", &["caf\u{FFFD} au lait"]),
        (b"half \xe6\x97\n", &["half \u{FFFD}"]),
        // Blank lines: no output at all.
        (b"\r\n\n   \r\n\t\t\n \t \n", &[]),
        // A line that is empty once sanitised is ignored too.
        (b"\x1b[2J\x07\r\n", &[]),
        (b"a\rb\n", &["ab"]),
        (b"end\n", &["end"]),
    ];
    for (raw, texts) in cases {
        room.clients[a].send_raw(raw).unwrap();
        for t in *texts {
            room.expect_chat_all(a, t);
        }
    }
    // A line in pieces over several writes.
    for piece in [&b"spl"[..], b"it li", b"ne\r", b"\n"] {
        room.clients[a].send_raw(piece).unwrap();
        std::thread::yield_now();
    }
    room.expect_chat_all(a, "split line");
    // b saw nothing else: its next line is this.
    room.sync(b, "done");
}

/// Bytes that must never reach a client: C0 controls but TAB (and CR/LF outside line ends),
/// DEL, C1 controls (UTF-8 C2 80–9F).
fn assert_terminal_safe(who: &str, lines: &[String]) {
    for l in lines {
        let b = l.as_bytes();
        for (i, &x) in b.iter().enumerate() {
            assert!(
                x == b'\t' || (x >= 0x20 && x != 0x7f),
                "{who}: control byte {x:#04x} in line {l:?}"
            );
            if x == 0xc2 {
                assert!(
                    !matches!(b.get(i + 1), Some(0x80..=0x9f)),
                    "{who}: C1 control in line {l:?}"
                );
            }
        }
    }
}

#[test]
fn escape_injection_never_reaches_others() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    let nick_a = room.nicks[a].clone();
    let nick_b = room.nicks[b].clone();
    let chats: &[(&[u8], &str)] = &[
        (b"\x1b[2J\x1b[31mred\x07", "red"),
        (b"\xc2\x9b31mX", "X"),
        (b"\x1b]0;pwned\x07title", "title"),
        (b"\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\", "link"),
        (b"\xc2\x9d0;osc8bit\x07ok", "ok"),
        (b"bell\x07\x07 ring", "bell ring"),
        (b"del\x7fete", "delete"),
        (b"\x00nul\x01\x02\x08back", "nulback"),
        (b"c1 \xc2\x85\xc2\x80 nel", "c1  nel"),
        (b"\x1bc reset", " reset"),
        (b"\x1b(0box\x1b(B", "box"),
        (b"\x1bP1$r\x1b\\dcs", "dcs"),
        (b"trailing\x1b", "trailing"),
        (b"\x1b[?1049h\x1b[1;1H\x1b[Kalt", "alt"),
        (b"tab\tkept", "tab\tkept"),
        // A raw 0x9b byte is not UTF-8: it becomes U+FFFD, harmless.
        (b"\x9b2J raw", "\u{FFFD}2J raw"),
    ];
    for (raw, text) in chats {
        let mut line = raw.to_vec();
        line.extend_from_slice(b"\r\n");
        room.clients[a].send_raw(&line).unwrap();
        room.expect_chat_all(a, text);
    }
    // Commands carry text too.
    room.clients[a].send_raw(b"/me \x1b[5mblinks\x1b[0m\x07\n").unwrap();
    room.expect_timed_all(&format!("* {nick_a} blinks"));
    room.clients[a].send_raw(format!("/msg {nick_b} \x1b[31mpssst\x07\n").as_bytes()).unwrap();
    expect_timed(&mut room.clients[b], &format!("[pm from {nick_a}] pssst"));
    expect_timed(&mut room.clients[a], &format!("[pm to {nick_b}] pssst"));
    room.clients[a].send_raw(b"/quit \x1b[2Jbye\x07\n").unwrap();
    let (a_lines, end) = {
        let ca = &mut room.clients[a];
        ca.read_to_close(LINE_TIMEOUT)
    };
    assert!(matches!(end, ReadError::Eof), "quitter: {end}");
    assert!(a_lines.is_empty(), "quitter read {a_lines:?}");
    for (i, c) in room.clients.iter_mut().enumerate() {
        if i != a {
            c.expect_line(&format!("* {nick_a} left (quit: bye)"));
        }
    }
    for c in &room.clients {
        assert_terminal_safe(c.label(), c.transcript());
    }
}
