//! The room fixture of the limits tests: a server without history on join or rate limit, and
//! a [`Room`] of clients (spread over at least two workers where a test needs it) that checks
//! every join notice and chat line its clients read.

use std::collections::HashSet;

use crate::common::*;

/// No history on join (a client's first line is its welcome), no rate limit.
pub fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}

/// Clients of one room with their nicks (see tests/protocol/room.rs for the same idea).
#[derive(Default)]
pub struct Room {
    pub clients: Vec<Client>,
    pub nicks: Vec<String>,
}

impl Room {
    pub fn join_one(&mut self, server: &Server) -> usize {
        let i = self.clients.len();
        let (c, nick, count) = server.join(&format!("c{i}"));
        assert_eq!(count, i + 1, "{nick}: online count in the welcome line");
        let notice = format!("* {nick} joined ({} online)", i + 1);
        for other in &mut self.clients {
            other.expect_line(&notice);
        }
        self.clients.push(c);
        self.nicks.push(nick);
        i
    }

    /// `n` clients on at least two different workers (the last one is replaced until so).
    pub fn spread(server: &Server, n: usize) -> Room {
        let mut room = Room::default();
        for _ in 0..n {
            room.join_one(server);
        }
        for _ in 0..30 {
            if room.owners(server).iter().collect::<HashSet<_>>().len() >= 2 {
                return room;
            }
            room.quit(room.clients.len() - 1);
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

    pub fn owners(&self, server: &Server) -> Vec<i32> {
        let ports: Vec<u16> = self.clients.iter().map(Client::local_port).collect();
        workers_of(&ports, server.port(), &server.worker_pids())
            .into_iter()
            .zip(&self.nicks)
            .map(|(o, nick)| o.unwrap_or_else(|| panic!("no worker holds {nick}'s connection")))
            .collect()
    }

    /// `from` says `text`; every client's next line must be that (same) chat line.
    pub fn chat(&mut self, from: usize, text: &str) -> String {
        self.clients[from].send_line(text);
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }
}
