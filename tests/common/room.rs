//! A room of clients for end-to-end tests: a server without history on join or rate limit,
//! and a [`Room`] of clients (spread over at least two workers where a test needs it) whose
//! every read line is checked, plus expectations on single lines (`HH:MM:SS ` prefixes, lines
//! up to a marker). Shared by the protocol and limits tests.

use std::collections::HashSet;

use super::*;

/// A room server: no history on join (a client's first line is its welcome, unless a test
/// asks for history), no rate limit (tests send bursts of commands).
pub fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}

/// Clients of one room, in join order, with their current nicks.
#[derive(Default)]
pub struct Room {
    pub clients: Vec<Client>,
    pub nicks: Vec<String>,
}

impl Room {
    /// Connects one client: it must get a welcome with the exact online count and a fresh nick,
    /// and every client already in the room must read its join notice as its next line.
    pub fn join_one(&mut self, server: &Server) -> usize {
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

    /// Connects `n` clients one after the other (see `join_one`).
    pub fn join(&mut self, server: &Server, n: usize) {
        for _ in 0..n {
            self.join_one(server);
        }
    }

    /// `n` clients served by at least two different workers: the last one is replaced (it
    /// quits, the others see it leave) until the room spans two workers.
    pub fn spread(server: &Server, n: usize) -> Room {
        assert!(n >= 2);
        let mut room = Room::default();
        room.join(server, n);
        for _ in 0..30 {
            if room.owners(server).iter().collect::<HashSet<_>>().len() >= 2 {
                return room;
            }
            room.replace_last();
            room.join_one(server);
        }
        panic!("30 reconnections never put {n} clients on two different workers");
    }

    /// Client `i` quits: the others read its leave notice, it reads EOF.
    pub fn quit(&mut self, i: usize) {
        let mut c = self.clients.remove(i);
        let nick = self.nicks.remove(i);
        c.send_line("/quit");
        let notice = format!("* {nick} left (quit)");
        for o in &mut self.clients {
            o.expect_line(&notice);
        }
        c.expect_eof();
    }

    /// The last client quits; everyone else must read its leave notice; it must read EOF.
    pub fn replace_last(&mut self) {
        let mut c = self.clients.pop().unwrap();
        let nick = self.nicks.pop().unwrap();
        c.send_line("/quit");
        let notice = format!("* {nick} left (quit)");
        self.expect_all(&notice);
        let (_, end) = c.read_to_close(LINE_TIMEOUT);
        assert!(matches!(end, ReadError::Eof), "{nick} after /quit: expected EOF, got {end}");
    }

    /// Which worker serves each client; every client must be served by exactly one of the
    /// server's workers and never by the supervisor.
    pub fn owners(&self, server: &Server) -> Vec<i32> {
        let mut candidates = server.worker_pids();
        candidates.push(server.pid());
        let ports: Vec<u16> = self.clients.iter().map(Client::local_port).collect();
        workers_of(&ports, server.port(), &candidates)
            .into_iter()
            .zip(&self.nicks)
            .map(|(o, nick)| {
                let pid = o.unwrap_or_else(|| panic!("no worker holds {nick}'s connection"));
                assert_ne!(pid, server.pid(), "the supervisor holds {nick}'s socket");
                pid
            })
            .collect()
    }

    /// Two clients served by different workers (the room must have been `spread`).
    pub fn cross_pair(&self, server: &Server) -> (usize, usize) {
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
    pub fn expect_all(&mut self, line: &str) {
        for c in &mut self.clients {
            c.expect_line(line);
        }
    }

    /// `from` says `text`; every client's next line must be that chat line, the same for all.
    pub fn chat(&mut self, from: usize, text: &str) -> String {
        self.clients[from].send_line(text);
        self.expect_chat_all(from, text)
    }

    /// Every client's next line must be `from`'s chat line with `text` (same line for all).
    pub fn expect_chat_all(&mut self, from: usize, text: &str) -> String {
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }

    /// Every client's next line must be `HH:MM:SS rest` (same line for all); returns it.
    pub fn expect_timed_all(&mut self, rest: &str) -> String {
        let lines: Vec<String> = self.clients.iter_mut().map(|c| expect_timed(c, rest)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }

    /// A barrier: `from` says `tag` and every client's next line must be it. Since `from`'s
    /// requests reach the hub in order and the hub's output reaches each worker in order, this
    /// proves that nothing `from` did before reached anyone else (and nothing is pending).
    pub fn sync(&mut self, from: usize, tag: &str) {
        self.chat(from, tag);
    }
}

/// `HH:MM:SS ` prefix check; returns the rest of the line.
pub fn strip_time(line: &str) -> Option<&str> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    let ok = b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit());
    ok.then_some(rest)
}

/// The next line must be `HH:MM:SS rest`; returns the whole line.
pub fn expect_timed(c: &mut Client, rest: &str) -> String {
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
pub fn lines_until(c: &mut Client, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let l = c.next_line();
        if l == marker {
            return out;
        }
        out.push(l);
    }
}
