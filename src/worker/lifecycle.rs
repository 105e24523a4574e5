//! How things end: a client connection (leaving the room, closing gracefully, or being
//! dropped), and the worker itself (its heartbeat while it lives, its exit).
//!
//! Leaving the room (telling the hub) and closing the socket are separate steps: a client that
//! quits stays until the hub confirms, a closing socket first flushes its last lines, and a
//! broken one is dropped at once.

use super::client::Phase;
use super::{CLOSE_GRACE, TICK, Worker};
use crate::bus::message::LeaveReason;
use crate::bus::{RoomRequest, ToHub, WorkerReport};
use std::process::ExitCode;
use std::time::Instant;

/// The worker's own life: its periodic work, its heartbeat, and its way out.
pub(super) struct Lifetime {
    /// When the next tick's work (idle checks, the accept sweep, memory trim) is due.
    pub next_tick: Instant,
    next_heartbeat: Instant,
    /// Set when the worker is going away: the exit code and the deadline for last flushes.
    pub exiting: Option<(ExitCode, Instant)>,
}

impl Lifetime {
    pub fn new() -> Lifetime {
        let now = Instant::now();
        Lifetime { next_tick: now + TICK, next_heartbeat: now + TICK, exiting: None }
    }

    pub fn is_exiting(&self) -> bool {
        self.exiting.is_some()
    }

    /// The worker goes with `code` once its clients are gone, or at `deadline` regardless.
    pub fn exit_by(&mut self, code: ExitCode, deadline: Instant) {
        self.exiting = Some((code, deadline));
    }
}

impl Worker {
    /// Tells the supervisor we are alive, once a second. Called every turn of the loop, and
    /// long stretches of work (a pass over thousands of clients, a hand-off) are cut into
    /// slices over several turns, so a busy worker is never taken for a hung one. Goes on while
    /// exiting, too.
    pub(super) fn heartbeat_if_due(&mut self, now: Instant) {
        if now >= self.life.next_heartbeat {
            self.life.next_heartbeat = now + TICK;
            self.report_counters();
            let _ = self.bus.flush();
        }
    }

    /// A heartbeat with what the worker counted so far; also the last thing a worker says, so
    /// the totals have everything it counted.
    pub(super) fn report_counters(&mut self) {
        let counters = self.counters;
        self.bus.send(&ToHub::Control(WorkerReport::Heartbeat { counters }));
    }

    /// Cuts clients idle for longer than `idle_timeout`, and drops closing connections whose
    /// time to flush is over.
    pub(super) fn check_idle_and_closing(&mut self, now: Instant) {
        let idle_timeout = self.config.chat.idle_timeout;
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (key, client) in self.clients.iter_mut() {
            client.release_idle_buffers();
            match client.phase {
                Phase::Closing { deadline, .. } if deadline <= now => expired.push(key),
                Phase::Live if idle_timeout.is_some_and(|t| now - client.last_line > t) => {
                    idle.push(key);
                }
                _ => {}
            }
        }
        for key in idle {
            self.disconnect(key, "* disconnected: idle", LeaveReason::Idle);
        }
        for key in expired {
            self.remove(key);
        }
    }

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
        self.end_opening(key);
        self.detach(key);
        let Some(client) = self.clients.get_mut(key) else { return };
        client.room_from = None;
        client.start_closing(Instant::now() + CLOSE_GRACE);
        if let Some(session) = client.session {
            self.sessions.remove(&session);
        }
        self.accept.joining.remove(&client.conn);
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
        self.end_opening(key);
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.stream);
        self.unkeep(&mut client);
        if let Some(session) = client.session {
            if self.sessions.get(&session) == Some(&key) {
                self.sessions.remove(&session);
            }
        }
        if self.accept.joining.get(&client.conn) == Some(&key) {
            self.accept.joining.remove(&client.conn);
        }
    }

    /// Says `line` to every client, stops accepting and exits once all is flushed (or the grace
    /// period is over).
    pub(super) fn begin_exit(&mut self, line: &str, code: ExitCode) {
        if self.life.is_exiting() {
            return;
        }
        self.life.exit_by(code, Instant::now() + CLOSE_GRACE);
        self.close_listeners();
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            let client = &mut self.clients[key];
            if client.is_closing() {
                continue;
            }
            client.left = true;
            client.transport.going_away();
            self.send_lines(key, &[line]);
            self.close(key);
        }
    }
}
