//! What a worker does with the lines its clients type.
//!
//! Input is processed line by line under two brakes: the client's rate limit (when its bucket is
//! empty the worker stops reading it, so TCP pushes back on the sender and nothing is dropped)
//! and the bus (when too much is waiting for the hub, input waits too). Commands that need the
//! room go to the hub; the rest (`/help`, usage errors) are answered here.

use super::Worker;
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
            Ok(Command::Who) => ToHub::Who { session },
            Ok(Command::Msg { to, text }) => ToHub::Msg { session, to, text },
            Ok(Command::History(count)) => ToHub::History { session, count },
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
}
