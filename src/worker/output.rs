//! What a worker writes to its clients, and when.
//!
//! Room lines are the bulk of the traffic and the same for everyone, so they are appended once to
//! a shared buffer, not copied per client. A flush is a pass over the room in which each client
//! gets one `writev` of its own queued bytes (if any) followed by the part of the shared buffer it
//! has not had, straight from there; a long pass is spread over several turns of the event loop,
//! and the buffer is trimmed to what someone is still owed when it ends. Only
//! what a socket does not take is copied into that client's queue, so a client that keeps up
//! never holds an output buffer at all, and a client that falls `max_backlog_bytes` behind is
//! cut off without the room waiting for it.
//!
//! Per-client order is kept by "detaching" a client before anything is queued for it alone (a
//! private line, a skipped room event): its pending share of the shared buffer moves into its
//! own queue first.

use super::Worker;
use super::kept::RoomMark;
use crate::bus::message::{LeaveReason, SessionId};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The same as `CLOSE_GRACE` (mod.rs) for a client cut as too slow: by definition it reads
/// slowly, and it should still get the rest of its last line, the notice and what the kernel
/// already holds for it.
const SLOW_READER_GRACE: Duration = Duration::from_secs(10);
/// Client output is written in passes over the room: a burst of room lines then costs one
/// `write` per client instead of one per line, and a line after a quiet spell goes out at once.
/// Each `write` to a TCP socket costs the kernel far more than the bytes in it (~6 µs here, ~90%
/// of a busy worker's profile is kernel TCP), so how often a pass may start sets the server's
/// efficiency. A pass starts at most every `FLUSH_INTERVAL` in a small room; in a big one, the
/// next pass waits until `FLUSH_DUTY` times the last one's duration has passed since it started,
/// up to `MAX_FLUSH_CYCLE`: a busy worker spends at most a fifth of its time writing. With 1,000
/// busy clients on two workers (a pass ~3 ms) that is one write per client every ~10 ms instead
/// of every ~5: ~40% less CPU and lower p99 latency, because the clients' own side gets the CPU
/// it needs to read (benches/README.md, S2). A duty of three left a worker of 333 clients (a
/// pass ~2 ms) writing every ~6 ms: 25% more writes for the same lines, which a machine shared
/// with other processes pays in everyone's latency (the cluster's S2, README).
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);
const FLUSH_DUTY: u32 = 5;
const MAX_FLUSH_CYCLE: Duration = Duration::from_millis(10);
/// A pass over many clients goes back to the event loop this often, so input and the bus are
/// not held up while thousands of clients are written to.
const PASS_SLICE: Duration = Duration::from_millis(1);
const PASS_SLICE_CLIENTS: usize = 256;
/// How often closing connections are checked for the peer's acknowledgement.
const LINGER_CHECK: Duration = Duration::from_millis(5);

/// The worker's output state: the shared room buffer, who has output waiting, and when the
/// next pass over the room may start.
pub(super) struct Output {
    /// Clients with output queued this turn.
    dirty: Vec<usize>,
    /// Room lines since the last flush, shared by every client in the room.
    room: Vec<u8>,
    /// Room bytes since the last tick, and whether a burst since the last memory trim.
    room_bytes_since_tick: usize,
    trim_due: bool,
    /// When the last client flush started, how long after that the next one may start, and
    /// when it is scheduled.
    last_flush: Instant,
    flush_cycle: Duration,
    flush_at: Option<Instant>,
    /// The pass over the room's clients in progress, if any.
    pass: Option<Pass>,
    /// Closing clients whose FIN is out: dropped once the peer acknowledged everything.
    lingering: Vec<usize>,
    /// Where each room line lies in `room`, while sessions are kept through a crash.
    pub marks: VecDeque<RoomMark>,
}

impl Output {
    pub fn new() -> Output {
        Output {
            dirty: Vec::new(),
            room: Vec::new(),
            room_bytes_since_tick: 0,
            trim_due: false,
            last_flush: Instant::now(),
            flush_cycle: FLUSH_INTERVAL,
            flush_at: None,
            pass: None,
            lingering: Vec::new(),
            marks: VecDeque::new(),
        }
    }

    /// Where a client that enters the room now starts reading the shared buffer.
    pub fn room_len(&self) -> usize {
        self.room.len()
    }

    /// A pass is under way: the event loop must come back to it without waiting.
    pub fn in_pass(&self) -> bool {
        self.pass.is_some()
    }

    /// When output next needs attention: a scheduled flush, or a check on closing clients.
    pub fn next_deadline(&self) -> Option<Instant> {
        let linger = (!self.lingering.is_empty()).then(|| Instant::now() + LINGER_CHECK);
        match (self.flush_at, linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After a burst of traffic, once a tick passes quietly, the freed buffers are handed back
    /// to the kernel: a room that was busy once should not keep its peak memory for good.
    pub fn trim_memory_when_quiet(&mut self) {
        let quiet = std::mem::take(&mut self.room_bytes_since_tick) == 0;
        if !quiet {
            self.trim_due = true;
        } else if self.trim_due {
            self.trim_due = false;
            crate::memory::trim();
        }
    }
}

impl Worker {
    /// A room line for every client in the room except `skip`.
    pub(super) fn room_line(&mut self, line: &str, skip: Option<SessionId>, seq: u64) {
        let skipped = skip.and_then(|s| self.sessions.get(&s).copied());
        if let Some(key) = skipped {
            self.detach(key);
        }
        let start = self.output.room.len();
        self.output.room.extend_from_slice(line.as_bytes());
        self.output.room.extend_from_slice(b"\r\n");
        if self.kept.is_some() {
            self.output.marks.push_back(RoomMark { start, end: self.output.room.len(), seq });
        }
        self.counters.deliveries += (self.sessions.len() - usize::from(skipped.is_some())) as u64;
        self.output.room_bytes_since_tick += line.len() + 2;
        if let Some(key) = skipped {
            if let Some(client) = self.clients.get_mut(key).filter(|c| c.room_from.is_some()) {
                client.room_from = Some(self.output.room.len());
            }
        }
    }

    /// Moves the shared room bytes this client has not had yet into its own queue.
    pub(super) fn detach(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if let Some(from) = client.room_from {
            if from < self.output.room.len() {
                let at = client.backlog() as u64;
                if let Some(tracked) = client.tracked.as_mut() {
                    tracked.follow(tracked.written + at, from, &self.output.marks);
                }
                client.queue(&self.output.room[from..]);
                client.room_from = Some(self.output.room.len());
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
                self.output.dirty.push(key);
            }
        }
    }

    /// A client's socket has room again: write its own queue at once. (New room lines still
    /// wait for the coalesced flush; they come after this queue anyway.) A client catching up
    /// on a backlog is never held back by the flush interval.
    pub(super) fn flush_backlog(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let sent = |n: &usize| self.counters.bytes_sent += *n as u64;
        if client.backlog() == 0 {
            return;
        }
        match client.flush_with(&[]).inspect(sent) {
            Ok(n) => Worker::track_written(&mut self.kept, client, n),
            Err(_) => self.lost(key),
        }
    }

    /// Flushes client output now, or schedules it: a pass over the room in progress goes on;
    /// a new one starts once the pause after the last one is over.
    pub(super) fn maybe_flush_clients(&mut self) {
        if self.output.pass.is_some() {
            self.continue_pass();
            return;
        }
        if self.output.dirty.is_empty() && self.output.room.is_empty() {
            return;
        }
        let now = Instant::now();
        let due = self.output.last_flush + self.output.flush_cycle;
        if now < due && !self.life.is_exiting() {
            self.output.flush_at = Some(due);
            return;
        }
        self.output.flush_at = None;
        if self.output.room.is_empty() {
            let mut settle = Settle::default();
            self.visit_dirty(&mut settle);
            self.settle(settle);
            self.output.last_flush = now;
            self.output.flush_cycle = FLUSH_INTERVAL;
        } else {
            self.output.pass = Some(Pass { next: 0, started: now });
            self.continue_pass();
        }
    }

    /// Writes to the clients of the pass in progress for about one `PASS_SLICE` (at most
    /// `PASS_SLICE_CLIENTS` of them), then returns to the event loop. Room lines that arrive
    /// meanwhile reach the clients not yet visited in this same pass; the others get them in the
    /// next one.
    fn continue_pass(&mut self) {
        let Some(mut pass) = self.output.pass.take() else { return };
        let slice_end = Instant::now() + PASS_SLICE;
        let mut settle = Settle::default();
        self.visit_dirty(&mut settle);
        let mut visited = 0usize;
        while pass.next < self.clients.capacity() {
            let key = pass.next;
            pass.next += 1;
            let room_len = self.output.room.len();
            let due = self
                .clients
                .get(key)
                .is_some_and(|c| c.flush_queued || c.room_from.is_some_and(|from| from < room_len));
            if !due {
                continue;
            }
            self.visit(key, &mut settle);
            visited += 1;
            if visited == PASS_SLICE_CLIENTS || (visited % 32 == 0 && Instant::now() >= slice_end) {
                break;
            }
        }
        self.settle(settle);
        if pass.next < self.clients.capacity() {
            self.output.pass = Some(pass);
            return;
        }
        self.compact_room();
        self.bound_total_backlog();
        // The next pass may start FLUSH_DUTY times this one's duration after this one started.
        let took = pass.started.elapsed();
        self.output.flush_cycle = (took * FLUSH_DUTY).clamp(FLUSH_INTERVAL, MAX_FLUSH_CYCLE);
        self.output.last_flush = pass.started;
    }

    fn visit_dirty(&mut self, settle: &mut Settle) {
        let mut dirty = std::mem::take(&mut self.output.dirty);
        for &key in &dirty {
            self.visit(key, settle);
        }
        dirty.clear();
        self.output.dirty = dirty;
    }

    /// Writes one client's own queue and the room lines it has not had yet.
    fn visit(&mut self, key: usize, settle: &mut Settle) {
        let max_backlog = self.config.chat.max_backlog_bytes;
        let Some(client) = self.clients.get_mut(key) else { return };
        client.flush_queued = false;
        let share = client.room_from.map_or(&[][..], |from| &self.output.room[from..]);
        let from = client.room_from;
        let backlog = client.backlog();
        if from.is_some() {
            client.room_from = Some(self.output.room.len());
        }
        // Too slow means the queue stayed over the limit through a flush: a reader that keeps up
        // is not cut off because one burst was bigger than its socket buffer.
        let was_over = backlog > max_backlog;
        let written = client.flush_with(share).inspect(|n| self.counters.bytes_sent += *n as u64);
        if let Ok(n) = written {
            let share = from.map(|from| (backlog, from, &self.output.marks));
            Worker::track_written_with(&mut self.kept, client, n, share);
        }
        match written {
            Ok(_) if was_over && client.backlog() > max_backlog => settle.too_slow.push(key),
            Ok(_) => {
                if client.shut_write_if_flushed() {
                    settle.shut.push(key);
                }
            }
            Err(_) => settle.lost.push(key),
        }
    }

    /// Drops the room bytes every client has had, so the shared buffer holds only what is
    /// still owed to someone.
    fn compact_room(&mut self) {
        let done = self.clients.iter().filter_map(|(_, c)| c.room_from).min();
        let done = done.unwrap_or(self.output.room.len());
        if done == 0 {
            return;
        }
        self.output.room.drain(..done);
        let gone = self.output.marks.partition_point(|m| m.start < done);
        self.output.marks.drain(..gone);
        for m in self.output.marks.iter_mut() {
            m.start -= done;
            m.end -= done;
        }
        for (_, client) in self.clients.iter_mut() {
            if let Some(from) = client.room_from.as_mut() {
                *from -= done;
            }
        }
    }

    /// Keeps the output queued for all of this worker's clients together under
    /// [`total_backlog_limit`]: when a room full of clients that never read would pass it, the
    /// largest backlogs are cut as too slow first, so memory stays bounded whatever the number of
    /// clients, while each of them is still allowed its own `max_backlog_bytes`.
    fn bound_total_backlog(&mut self) {
        let limit = total_backlog_limit(self.config.chat.max_backlog_bytes);
        let total: usize = self.clients.iter().map(|(_, c)| c.backlog()).sum();
        if total <= limit {
            return;
        }
        let mut largest: Vec<(usize, usize)> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.is_closing() && c.backlog() > 0)
            .map(|(key, c)| (c.backlog(), key))
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        let mut over = total - limit;
        let mut settle = Settle::default();
        for (backlog, key) in largest {
            settle.too_slow.push(key);
            over = over.saturating_sub(backlog);
            if over == 0 {
                break;
            }
        }
        log::warn!(
            "clients' output queues reached {} MiB together (limit {} MiB); cutting the {} \
             largest as too slow",
            total >> 20,
            limit >> 20,
            settle.too_slow.len()
        );
        self.settle(settle);
    }

    /// Drops closing connections whose last bytes the peer has acknowledged. Closing earlier,
    /// with unread input or unacknowledged output, could turn into a reset that destroys the
    /// last lines in flight; waiting for the peer's own close could take forever.
    pub(super) fn reap_lingering(&mut self) {
        if self.output.lingering.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for key in std::mem::take(&mut self.output.lingering) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            if !client.is_closing() {
                continue;
            }
            if client.unacked() == 0 {
                client.discard_input(&mut self.input.scratch);
                self.remove(key);
            } else {
                still.push(key);
            }
        }
        self.output.lingering = still;
    }

    /// What a flush found out about its clients, acted on once the writing is over.
    fn settle(&mut self, settle: Settle) {
        for key in settle.lost {
            self.lost(key);
        }
        for key in settle.too_slow {
            if let Some(client) = self.clients.get_mut(key) {
                client.discard_output();
            }
            self.disconnect(key, "* disconnected: too slow", LeaveReason::TooSlow);
            if let Some(client) = self.clients.get_mut(key) {
                client.extend_closing(Instant::now() + SLOW_READER_GRACE);
            }
        }
        for key in settle.shut {
            match self.clients.get(key) {
                Some(client) if client.eof => self.remove(key),
                Some(_) => self.output.lingering.push(key),
                None => {}
            }
        }
    }
}

/// A pass over every client in the room, spread over several turns of the event loop.
struct Pass {
    /// The next client key to visit.
    next: usize,
    started: Instant,
}

#[derive(Default)]
struct Settle {
    lost: Vec<usize>,
    too_slow: Vec<usize>,
    shut: Vec<usize>,
}

/// The output a worker queues for all its clients together: 64 clients' worth of
/// `max_backlog_bytes` (64 MiB with the default of 1 MiB), and never less than 16 MiB, so a few
/// clients catching up on a burst are never affected.
pub(super) fn total_backlog_limit(max_backlog_bytes: usize) -> usize {
    max_backlog_bytes.saturating_mul(64).max(16 << 20)
}
