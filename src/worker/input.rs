//! What a worker does with the lines its clients type.
//!
//! Input is processed line by line under two brakes: the client's rate limit (when its bucket is
//! empty the worker stops reading it, so TCP pushes back on the sender and nothing is dropped)
//! and the bus (when too much is waiting for the hub, input waits too). Commands that change the
//! room go to the hub; the rest (`/who`, `/history` from the worker's copy of the room, `/help`,
//! usage errors) are answered here, as the asker's own output.

use super::Worker;
use super::room_state::DEFAULT_HISTORY_REQUEST;
use crate::bus::ToHub;
use crate::bus::message::LeaveReason;
use crate::protocol::command::{self, Command};
use crate::protocol::decoder::Decoded;
use client_io::Input;
use std::cmp::Reverse;
use std::time::Instant;

use super::client as client_io;

impl Worker {
    /// Processes what a client sent, reading more while it may.
    pub(super) fn service(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            if client.is_closing() {
                if client.can_read && client.discard_input(&mut self.scratch) {
                    client.eof = true;
                    if client.backlog() == 0 {
                        self.remove(key);
                    }
                }
                return;
            }
            if !client.is_live() || client.throttled {
                return;
            }
            if self.bus.pending_out() > super::BUS_HIGH_WATER {
                self.stalled.push(key);
                return;
            }
            if client.decoder.has_pending() {
                let now = Instant::now();
                if let Some(bucket) = client.bucket.as_mut() {
                    if let Err(wait) = bucket.take(now) {
                        client.throttled = true;
                        self.throttled.push(Reverse((now + wait, key, client.conn)));
                        return;
                    }
                }
                match client.decoder.next() {
                    Some(Decoded::Line(line)) => {
                        client.last_line = now;
                        self.on_line(key, line);
                    }
                    Some(Decoded::TooLong) => {
                        let max = self.config.chat.max_line_bytes;
                        self.send_lines(key, &[format!("! line too long (max {max} bytes)")]);
                    }
                    None => {}
                }
                continue;
            }
            if client.eof {
                self.depart(key, LeaveReason::Closed);
                return;
            }
            if !client.can_read {
                return;
            }
            match client.read_input(&mut self.scratch) {
                Ok(Input::Data) | Ok(Input::Empty) => {}
                Ok(Input::Eof) => {
                    client.eof = true;
                    client.decoder.finish();
                }
                Err(_) => {
                    self.lost(key);
                    return;
                }
            }
        }
    }

    fn on_line(&mut self, key: usize, line: String) {
        let Some(session) = self.clients.get(key).and_then(|c| c.session) else { return };
        let request = match command::parse(&line) {
            Ok(Command::Say(text)) => ToHub::Say { session, text },
            Ok(Command::Me(text)) => ToHub::Me { session, text },
            Ok(Command::Nick(nick)) => ToHub::Nick { session, nick },
            Ok(Command::Who) => {
                let budget = self.config.chat.max_backlog_bytes / 2;
                let line = self.room_state.who(budget).to_owned();
                self.send_lines(key, &[line]);
                return;
            }
            Ok(Command::Msg { to, text }) => ToHub::Msg { session, to, text },
            Ok(Command::History(count)) => {
                self.answer_history(key, count);
                return;
            }
            Ok(Command::Help) => {
                let help: Vec<String> = command::HELP.iter().map(|h| format!("* {h}")).collect();
                self.send_lines(key, &help);
                return;
            }
            Ok(Command::Quit(reason)) => {
                self.depart(key, LeaveReason::Quit(reason));
                return;
            }
            Err(e) => {
                self.send_lines(key, &[format!("! {e}")]);
                return;
            }
        };
        self.bus.send(&request);
    }

    /// `/history [N]`: at most the configured history, and at most what the asker's backlog can
    /// take at once (half of `max_backlog_bytes`, so an answer alone never cuts it off).
    fn answer_history(&mut self, key: usize, count: Option<usize>) {
        let wanted = count.unwrap_or(DEFAULT_HISTORY_REQUEST).min(self.config.chat.history);
        let budget = self.config.chat.max_backlog_bytes / 2;
        let lines = self.room_state.recent(wanted, budget);
        if lines.is_empty() {
            return self.send_lines(key, &["* no history yet"]);
        }
        let available = wanted.min(self.room_state.history_len());
        let mut answer: Vec<String> = Vec::with_capacity(lines.len() + 1);
        if lines.len() < available {
            answer.push(format!(
                "* only the last {} of {available} lines fit in one answer",
                lines.len()
            ));
        }
        answer.extend(lines.into_iter().map(str::to_owned));
        self.send_lines(key, &answer);
    }
}
