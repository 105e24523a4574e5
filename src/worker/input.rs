//! What a worker does with the lines its clients type.
//!
//! Input is processed line by line under two brakes: the client's rate limit (when its bucket is
//! empty the worker stops reading it, so TCP pushes back on the sender and nothing is dropped)
//! and the bus (when too much is waiting for the hub, input waits too). Requests go to the hub;
//! `/who` and `/history` come back from it as a bare echo and are answered here from the
//! worker's copy of the room, as the asker's own output; `/help` and usage errors are answered
//! at once.

use super::Worker;
use super::room_state::{DEFAULT_HISTORY_REQUEST, RoomState};
use crate::bus::handoff::Transfer;
use crate::bus::message::LeaveReason;
use crate::bus::message::{ConnId, Query, SessionId, split_lines};
use crate::bus::{RoomRequest, ToHub};
use crate::config::Config;
use crate::protocol::command::{self, Command};
use crate::protocol::decoder::Decoded;
use client_io::{Input, Phase};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::client as client_io;

/// One read from a client takes at most this much.
const READ_CHUNK: usize = 64 * 1024;

/// The worker's input state: the read buffer, and the clients whose input waits.
pub(super) struct Intake {
    /// Clients waiting for the bus to drain before their input is processed.
    stalled: Vec<usize>,
    /// Rate-limited clients by the time they may send again.
    throttled: BinaryHeap<Reverse<(Instant, usize, ConnId)>>,
    /// What one read from a client lands in.
    pub scratch: Vec<u8>,
}

impl Intake {
    pub fn new() -> Intake {
        Intake { stalled: Vec::new(), throttled: BinaryHeap::new(), scratch: vec![0; READ_CHUNK] }
    }

    /// When the first rate-limited client may send again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.throttled.peek().map(|Reverse((at, _, _))| *at)
    }
}

impl Worker {
    /// Processes what a client sent, reading more while it may.
    pub(super) fn service(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            if client.is_closing() {
                if client.can_read && client.discard_input(&mut self.input.scratch) {
                    client.eof = true;
                    if client.backlog() == 0 {
                        self.remove(key);
                    }
                }
                return;
            }
            if client.phase == Phase::Opening {
                return self.advance_opening(key);
            }
            if !client.is_live() || client.throttled {
                return;
            }
            if self.bus.pending_out() > super::BUS_HIGH_WATER {
                self.input.stalled.push(key);
                return;
            }
            if client.decoder.has_pending() {
                let now = Instant::now();
                if let Some(bucket) = client.bucket.as_mut() {
                    if let Err(wait) = bucket.take(now) {
                        self.counters.rate_limited += 1;
                        client.throttled = true;
                        self.input.throttled.push(Reverse((now + wait, key, client.conn)));
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
            match client.read_input(&mut self.input.scratch) {
                Ok(Input::Data(n)) => {
                    self.counters.bytes_received += n as u64;
                    Worker::track_input(&mut self.kept, client);
                    // A layer's answer (a TLS KeyUpdate of our own) goes out with the next pass.
                    if client.transport.unsent() > 0 {
                        self.mark_dirty(key);
                    }
                }
                Ok(Input::Empty | Input::Opened) => {}
                Ok(Input::Eof) => {
                    client.eof = true;
                    client.decoder.finish();
                }
                Ok(Input::Refused(reason) | Input::Answered(reason)) => {
                    log::debug!("connection {} cut: {reason}", client.conn);
                    self.leave(key, LeaveReason::Lost);
                    self.close(key);
                    return;
                }
                Err(_) => {
                    self.lost(key);
                    return;
                }
            }
        }
    }

    /// Rate-limited clients whose wait is over read on.
    pub(super) fn wake_throttled(&mut self, now: Instant) {
        while let Some(Reverse((at, key, conn))) = self.input.throttled.peek().copied() {
            if at > now {
                break;
            }
            self.input.throttled.pop();
            if let Some(client) = self.clients.get_mut(key).filter(|c| c.conn == conn) {
                client.throttled = false;
                self.service(key);
            }
        }
    }

    /// The bus has room again: clients that waited for it read on.
    pub(super) fn resume_stalled(&mut self) {
        if !self.input.stalled.is_empty() {
            for key in std::mem::take(&mut self.input.stalled) {
                self.service(key);
            }
        }
    }

    fn on_line(&mut self, key: usize, line: String) {
        let Some(session) = self.clients.get(key).and_then(|c| c.session) else { return };
        let request = match command::parse(&line) {
            Ok(Command::Say(text)) => RoomRequest::Say { session, text },
            Ok(Command::Me(text)) => RoomRequest::Me { session, text },
            Ok(Command::Nick(nick)) => RoomRequest::Nick { session, nick },
            Ok(Command::Who) => RoomRequest::Query { session, query: Query::Who },
            Ok(Command::Msg { to, text }) => RoomRequest::Msg { session, to, text },
            Ok(Command::History(count)) => {
                RoomRequest::Query { session, query: Query::History(count) }
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
        self.bus.send(&ToHub::Room(request));
    }

    /// The hub echoed a `/who` or `/history`: answer it from this worker's copy of the room,
    /// which now holds every room event up to the question's place in the order. A session
    /// handed to the next worker meanwhile gets its answer forwarded.
    pub(super) fn answer(&mut self, session: SessionId, query: Query) {
        if self.handoff.moved.contains_key(&session) {
            let mut lines = Vec::new();
            write_answer(&mut self.room_state, &self.config, &query, |line| {
                lines.push(line.to_owned())
            });
            for lines in split_lines(lines) {
                self.forward(session, Transfer::Direct { session, lines });
            }
            return;
        }
        let Some(&key) = self.sessions.get(&session) else { return };
        self.detach(key);
        let Some(client) = self.clients.get_mut(key) else { return };
        write_answer(&mut self.room_state, &self.config, &query, |line| client.queue_line(line));
        self.mark_dirty(key);
    }
}

/// The lines of an answer, given one by one to `emit`. `/who` and `/history [N]` (at most the
/// configured history) are each held to half of `max_backlog_bytes`, so an answer alone never
/// cuts the asker off.
fn write_answer(room: &mut RoomState, config: &Config, query: &Query, mut emit: impl FnMut(&str)) {
    let budget = config.chat.max_backlog_bytes / 2;
    match query {
        Query::Who => emit(room.who(budget)),
        Query::History(count) => {
            let wanted = count.unwrap_or(DEFAULT_HISTORY_REQUEST).min(config.chat.history);
            let lines = room.recent(wanted, budget);
            if lines.is_empty() {
                return emit("* no history yet");
            }
            let available = wanted.min(room.history_len());
            if lines.len() < available {
                let fit = lines.len();
                emit(&format!("* only the last {fit} of {available} lines fit in one answer"));
            }
            for line in lines {
                emit(line);
            }
        }
    }
}
