//! What a worker writes to its clients, and when.
//!
//! Room lines are the bulk of the traffic and the same for everyone, so they are appended once to
//! a shared buffer, not copied per client. At flush time each client gets one `writev` of its
//! own queued bytes (if any) followed by its part of the shared buffer, straight from there. Only
//! what a socket does not take is copied into that client's queue, so a client that keeps up
//! never holds an output buffer at all, and a client that falls `max_backlog_bytes` behind is
//! cut off without the room waiting for it.
//!
//! Per-client order is kept by "detaching" a client before anything is queued for it alone (a
//! private line, a skipped room event): its pending share of the shared buffer moves into its
//! own queue first.

use super::{FLUSH_INTERVAL, Worker};
use crate::bus::ToHub;
use crate::bus::message::{LeaveReason, SessionId};
use std::time::Instant;

impl Worker {
    /// A room line for every client in the room except `skip`.
    pub(super) fn room_line(&mut self, line: &str, skip: Option<SessionId>) {
        let skipped = skip.and_then(|s| self.sessions.get(&s).copied());
        if let Some(key) = skipped {
            self.detach(key);
        }
        self.room.extend_from_slice(line.as_bytes());
        self.room.extend_from_slice(b"\r\n");
        self.room_bytes_since_tick += line.len() + 2;
        if let Some(key) = skipped {
            if let Some(client) = self.clients.get_mut(key).filter(|c| c.room_from.is_some()) {
                client.room_from = Some(self.room.len());
            }
        }
    }

    /// Moves the shared room bytes this client has not had yet into its own queue.
    pub(super) fn detach(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if let Some(from) = client.room_from {
            if from < self.room.len() {
                client.queue(&self.room[from..]);
                client.room_from = Some(self.room.len());
            }
        }
    }

    /// Lines for one client, in their place after the room lines it already has coming.
    pub(super) fn send_lines<S: AsRef<str>>(&mut self, key: usize, lines: &[S]) {
        self.detach(key);
        let Some(client) = self.clients.get_mut(key) else { return };
        for line in lines {
            client.queue_line(line.as_ref());
        }
        self.mark_dirty(key);
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.flush_queued {
                client.flush_queued = true;
                self.dirty.push(key);
            }
        }
    }

    /// A client's socket has room again: write its own queue at once. (New room lines still
    /// wait for the coalesced flush; they come after this queue anyway.) A client catching up
    /// on a backlog is never held back by the flush interval.
    pub(super) fn flush_backlog(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if client.backlog() > 0 && client.flush_with(&[]).is_err() {
            self.lost(key);
        }
    }

    /// Flushes client output now, or schedules it if the last flush was very recent.
    pub(super) fn maybe_flush_clients(&mut self) {
        if self.dirty.is_empty() && self.room.is_empty() {
            return;
        }
        let now = Instant::now();
        let due = self.last_flush + FLUSH_INTERVAL;
        if now >= due || self.exiting.is_some() {
            self.flush_at = None;
            self.last_flush = now;
            self.flush_clients();
        } else {
            self.flush_at = Some(due);
        }
    }

    /// Writes every client's pending output: everyone in the room when room lines are pending,
    /// else just the clients with something of their own.
    fn flush_clients(&mut self) {
        let max_backlog = self.config.chat.max_backlog_bytes;
        let mut lost = Vec::new();
        let mut too_slow = Vec::new();
        let mut shut = Vec::new();
        let room = &self.room;
        let mut visit = |key: usize, client: &mut super::client::Client| {
            client.flush_queued = false;
            let share = client.room_from.map_or(&[][..], |from| &room[from..]);
            if client.room_from.is_some() {
                client.room_from = Some(0);
            }
            // Too slow means the queue stayed over the limit through a flush: a reader that
            // keeps up is not cut off because one burst was bigger than its socket buffer.
            let was_over = client.backlog() > max_backlog;
            match client.flush_with(share) {
                Ok(()) if was_over && client.backlog() > max_backlog => too_slow.push(key),
                Ok(()) => {
                    if client.shut_write_if_flushed() {
                        shut.push(key);
                    }
                }
                Err(_) => lost.push(key),
            }
        };
        if self.room.is_empty() {
            for &key in &self.dirty {
                if let Some(client) = self.clients.get_mut(key) {
                    visit(key, client);
                }
            }
        } else {
            let mut visited = 0usize;
            for (key, client) in self.clients.iter_mut() {
                if client.flush_queued || client.room_from.is_some() {
                    visit(key, client);
                    visited += 1;
                    if visited % 512 == 0 {
                        let now = Instant::now();
                        if now >= self.next_heartbeat {
                            self.next_heartbeat = now + super::TICK;
                            self.bus.send(&ToHub::Heartbeat);
                            let _ = self.bus.flush();
                        }
                    }
                }
            }
        }
        self.dirty.clear();
        self.room.clear();
        for key in lost {
            self.lost(key);
        }
        for key in too_slow {
            if let Some(client) = self.clients.get_mut(key) {
                client.discard_output();
            }
            self.disconnect(key, "* disconnected: too slow", LeaveReason::TooSlow);
        }
        for key in shut {
            match self.clients.get(key) {
                Some(client) if client.eof => self.remove(key),
                Some(_) => self.lingering.push(key),
                None => {}
            }
        }
    }
}
