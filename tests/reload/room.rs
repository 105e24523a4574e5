//! A small room of blocking [`Client`]s (a few dozen) for the reload tests that check every
//! line each client reads: joins with their notices, a chat line that must be everyone's very
//! next line, and which worker holds each session.

use std::net::SocketAddr;

use crate::common::*;

#[derive(Default)]
pub struct Room {
    pub clients: Vec<Client>,
    pub nicks: Vec<String>,
}

impl Room {
    /// Connects `n` clients one after the other; everyone already in reads each join notice.
    pub fn join(&mut self, server: &Server, n: usize, label: &str) {
        for _ in 0..n {
            self.join_at(server.addr(), label);
        }
    }

    pub fn join_at(&mut self, addr: SocketAddr, label: &str) -> usize {
        let i = self.clients.len();
        let mut c = Client::connect(addr, &format!("{label}{i}"));
        let (nick, count) = c.expect_welcome();
        assert_eq!(count, i + 1, "{nick}: online count in the welcome line");
        let notice = format!("* {nick} joined ({} online)", i + 1);
        for other in &mut self.clients {
            other.expect_line(&notice);
        }
        self.clients.push(c);
        self.nicks.push(nick);
        i
    }

    /// `from` says `text`; every client's very next line must be that chat line.
    pub fn chat(&mut self, from: usize, text: &str) {
        self.clients[from].send_line(text);
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
    }

    pub fn ports(&self) -> Vec<u16> {
        self.clients.iter().map(Client::local_port).collect()
    }

    /// Every client's connection is held by one of `pids`; returns the owner of each.
    pub fn owners(&self, server_port: u16, pids: &[i32]) -> Vec<i32> {
        let owners = workers_of(&self.ports(), server_port, pids);
        owners
            .iter()
            .zip(&self.nicks)
            .map(|(o, nick)| {
                o.unwrap_or_else(|| panic!("none of the workers {pids:?} holds {nick}'s socket"))
            })
            .collect()
    }

    /// No client has anything to read (nothing unexpected arrived, nobody was disconnected):
    /// a round trip proves it — `probe` says something and it must be everyone's next line.
    pub fn quiet_check(&mut self, probe: usize, text: &str) {
        self.chat(probe, text);
    }
}
