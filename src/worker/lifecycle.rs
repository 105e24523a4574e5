//! How a client connection ends: leaving the room, closing gracefully, or being dropped.
//!
//! Leaving the room (telling the hub) and closing the socket are separate steps: a client that
//! quits stays until the hub confirms, a closing socket first flushes its last lines, and a
//! broken one is dropped at once.

use super::client::Phase;
use super::{CLOSE_GRACE, Worker};
use crate::bus::message::LeaveReason;
use crate::bus::{RoomRequest, ToHub};
use std::process::ExitCode;
use std::time::Instant;

impl Worker {
    /// Queues a last line, tells the hub why the client left, and closes after flushing.
    pub(super) fn disconnect(&mut self, key: usize, line: &str, reason: LeaveReason) {
        if self.clients.get(key).is_none_or(|c| c.is_closing()) {
            return;
        }
        self.send_lines(key, &[line]);
        self.leave(key, reason);
        self.close(key);
    }

    /// The client asked to leave (quit, or EOF): the hub announces it and confirms with `Left`,
    /// which closes the connection; until then answers to its last requests still arrive.
    pub(super) fn depart(&mut self, key: usize, reason: LeaveReason) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if client.session.is_some() && !client.left && client.is_live() {
            client.phase = Phase::Leaving;
            self.leave(key, reason);
        } else {
            self.leave(key, reason);
            self.close(key);
        }
    }

    /// Tells the hub (once) that this client left the room.
    pub(super) fn leave(&mut self, key: usize, reason: LeaveReason) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if client.left {
            return;
        }
        client.left = true;
        if let Some(session) = client.session {
            self.bus.send(&ToHub::Room(RoomRequest::Leave { session, reason }));
        }
    }

    /// Starts closing a connection: no more room lines, flush, FIN, then drop.
    pub(super) fn close(&mut self, key: usize) {
        self.detach(key);
        let Some(client) = self.clients.get_mut(key) else { return };
        client.room_from = None;
        client.start_closing(Instant::now() + CLOSE_GRACE);
        if let Some(session) = client.session {
            self.sessions.remove(&session);
        }
        self.joining.remove(&client.conn);
        self.mark_dirty(key);
    }

    /// The connection broke (reset, write error): leave as `connection lost` and drop it now.
    pub(super) fn lost(&mut self, key: usize) {
        self.leave(key, LeaveReason::Lost);
        self.remove(key);
    }

    pub(super) fn remove(&mut self, key: usize) {
        if !self.clients.contains(key) {
            return;
        }
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.stream);
        if let Some(session) = client.session {
            if self.sessions.get(&session) == Some(&key) {
                self.sessions.remove(&session);
            }
        }
        if self.joining.get(&client.conn) == Some(&key) {
            self.joining.remove(&client.conn);
        }
    }

    /// Says `line` to every client, stops accepting and exits once all is flushed (or the grace
    /// period is over).
    pub(super) fn begin_exit(&mut self, line: &str, code: ExitCode) {
        if self.exiting.is_some() {
            return;
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        self.exiting = Some((code, deadline));
        self.accepting = false;
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            let client = &mut self.clients[key];
            if client.is_closing() {
                continue;
            }
            client.left = true;
            self.send_lines(key, &[line]);
            self.close(key);
        }
    }
}
