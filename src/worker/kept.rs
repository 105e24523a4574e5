//! Sessions kept through a crash of the supervisor (SPEC §8), the worker's part: under systemd
//! (`--keep-sessions`) every plain TCP session in the room has its socket in the worker's bag
//! and a record in its session table (`crate::store::bag`, `crate::store::table`), both
//! handed to the supervisor, which keeps them in systemd's descriptor store. After each write
//! to a client the record says how far its output got (`Tracked`), so the supervisor started
//! after a crash resumes it from the last room line it received whole.
//!
//! A bag holds a reference to each socket, so a session that ends here is shut down
//! (`shutdown`), not only closed. When the supervisor dies, a worker with kept sessions exits
//! without a word to them: they are resumed by the next supervisor's workers.

use super::Worker;
use super::client::Client;
use super::transport::Transport;
use crate::bus::{ToHub, WorkerReport, message::KeptFile};
use crate::store::bag::Bag;
use crate::store::table::{Position, Table, Tail};
use log::{info, warn};
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};

/// Records the table starts with; it doubles when full.
const FIRST_RECORDS: usize = 256;
/// Messages a bag takes before a new one is made: well under what a socket's send buffer
/// allows (~200 KiB, a few hundred small messages).
const BAG_MESSAGES: usize = 128;

/// A room line in a client's own output queue, as positions in the client's byte stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub start: u64,
    pub end: u64,
    pub seq: u64,
}

/// What a kept session's record is kept up to date from.
#[derive(Debug)]
pub(super) struct Tracked {
    /// Its slot in the table.
    pub slot: usize,
    /// Bytes written to the socket, counted as the kernel does (`tcpi_bytes_acked` plus the
    /// send queue), so it means the same in every worker that ever held the socket.
    pub written: u64,
    /// The last room event it received whole.
    pub last_full: u64,
    /// Room lines queued for it, not yet written whole.
    pub marks: VecDeque<Mark>,
    /// Where the lines of a replay queued so far lie in its stream; their numbers are known
    /// once the replay is complete ([`Tracked::replayed_up_to`]).
    pub replayed: Vec<(u64, u64)>,
}

impl Tracked {
    /// The position after `n` more bytes were written; `mid_line` whether they ended inside a
    /// line.
    pub fn advance(&mut self, n: usize, mid_line: bool) -> Position {
        self.written += n as u64;
        while let Some(m) = self.marks.front().filter(|m| m.end <= self.written) {
            self.last_full = m.seq;
            self.marks.pop_front();
        }
        let tail = match self.marks.front() {
            Some(m) if m.start < self.written => {
                Tail::Room { seq: m.seq, len: self.written - m.start }
            }
            _ if mid_line => Tail::Other,
            _ => Tail::Clean,
        };
        Position { written: self.written, last_full: self.last_full, tail }
    }
}

/// The worker's table and bag.
pub(super) struct Kept {
    table: Table,
    bag: Bag,
    free: Vec<usize>,
    used: usize,
    /// Sockets in the bag whose session ended here: a new bag is made once they are many.
    dead: usize,
    /// The kernel refused more sockets in flight: no new session is kept.
    refused: bool,
}

impl Worker {
    /// Under systemd: a table and a bag, both sent to the supervisor to be stored.
    pub(super) fn start_keeping(&mut self) {
        let made = Table::create("sessions", FIRST_RECORDS).and_then(|t| Ok((t, Bag::new()?)));
        let (table, bag) = match made {
            Ok(made) => made,
            Err(e) => return warn!("cannot keep sessions through a crash: {e}"),
        };
        let free = (0..table.capacity()).rev().collect();
        let mut kept = Kept { table, bag, free, used: 0, dead: 0, refused: false };
        if let Ok(fd) = kept.table.file().try_clone_to_owned() {
            let report = ToHub::Control(WorkerReport::Kept { file: KeptFile::Table });
            self.bus.send_with_fds(&report, vec![fd]);
        }
        self.send_bag(&mut kept.bag);
        self.kept = Some(kept);
    }

    fn send_bag(&mut self, bag: &mut Bag) {
        if let Some(fd) = bag.take_receiver() {
            let report = ToHub::Control(WorkerReport::Kept { file: KeptFile::Bag });
            self.bus.send_with_fds(&report, vec![fd]);
        }
    }

    /// A plain TCP session entered the room here (admitted, or adopted; `last_full` is the
    /// last room event it had whole): it goes into the bag and the table.
    pub(super) fn keep(&mut self, key: usize, last_full: u64) {
        let Some(kept) = self.kept.as_mut().filter(|k| !k.refused) else { return };
        let Some(client) = self.clients.get_mut(key) else { return };
        let Some(session) = client.session else { return };
        if !matches!(client.transport, Transport::Plain) || client.tracked.is_some() {
            return;
        }
        if kept.free.is_empty() {
            let old = kept.table.capacity();
            if let Err(e) = kept.table.grow(old * 2) {
                return warn!("session table: {e}; session {session} is not kept");
            }
            kept.free.extend((old..kept.table.capacity()).rev());
        }
        let Some(slot) = kept.free.pop() else { return };
        let fd = client.stream.as_fd();
        let written = crate::store::table::socket_written(fd);
        let position = Position { written, last_full, tail: Tail::Clean };
        kept.table.open(slot, session.0, crate::store::bag::inode(fd), position);
        kept.used += 1;
        client.tracked = Some(Box::new(Tracked {
            slot,
            written,
            last_full,
            marks: VecDeque::new(),
            replayed: Vec::new(),
        }));
        let full = kept.bag.messages >= BAG_MESSAGES;
        match if full { Ok(()) } else { kept.bag.put(&[fd]) } {
            Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => self.stop_keeping(&e),
            Err(_) => self.repack(),
            Ok(()) if full => self.repack(),
            Ok(()) => {}
        }
    }

    /// Writes the client's position after `n` bytes of its own queue went out.
    pub(super) fn track_written(kept: &mut Option<Kept>, client: &mut Client, n: usize) {
        Worker::track_written_with(kept, client, n, None);
    }

    /// Writes the client's position after `n` bytes went out: its own queue, then, with
    /// `share = (backlog, from, marks)`, the shared room lines from `from` on, which followed
    /// its `backlog` queued bytes.
    pub(super) fn track_written_with(
        kept: &mut Option<Kept>,
        client: &mut Client,
        n: usize,
        share: Option<(usize, usize, &VecDeque<RoomMark>)>,
    ) {
        let mid_line = client.mid_line();
        let (Some(kept), Some(tracked)) = (kept.as_mut(), client.tracked.as_mut()) else {
            return;
        };
        let position = match share {
            Some((backlog, from, room)) => tracked.advance_shared(n, mid_line, backlog, from, room),
            None => tracked.advance(n, mid_line),
        };
        kept.table.set_position(tracked.slot, position);
    }

    /// Records the unfinished input line and the rate limiter's tokens after a read: what
    /// was read is no longer in the socket.
    pub(super) fn track_input(kept: &mut Option<Kept>, client: &mut Client) {
        let (Some(kept), Some(tracked)) = (kept.as_mut(), client.tracked.as_ref()) else {
            return;
        };
        kept.table.set_input(tracked.slot, client.decoder.partial());
        let tokens = client.bucket.as_mut().map(|b| b.tokens(std::time::Instant::now()));
        kept.table.set_tokens(tracked.slot, tokens);
    }

    /// A kept session ends here: its record is freed and its socket shut down, since the bag
    /// still holds it open.
    pub(super) fn unkeep(&mut self, client: &mut Client) {
        let (Some(kept), Some(tracked)) = (self.kept.as_mut(), client.tracked.take()) else {
            return;
        };
        kept.table.close(tracked.slot);
        kept.free.push(tracked.slot);
        kept.used -= 1;
        kept.dead += 1;
        let _ = client.stream.shutdown(std::net::Shutdown::Both);
        if kept.dead > 64 && kept.dead > kept.used {
            self.repack();
        }
    }

    /// A new bag with the live sessions' sockets only, sent to the supervisor, which stores
    /// it and drops the old one.
    fn repack(&mut self) {
        let mut bag = match Bag::new() {
            Ok(bag) => bag,
            Err(e) => return warn!("a new bag for the kept sessions: {e}"),
        };
        let fds: Vec<BorrowedFd<'_>> = self
            .clients
            .iter()
            .filter(|(_, c)| c.tracked.is_some())
            .map(|(_, c)| c.stream.as_fd())
            .collect();
        if let Err(e) = bag.put(&fds) {
            if e.raw_os_error() == Some(libc::ETOOMANYREFS) {
                return self.stop_keeping(&e);
            }
            return warn!("a new bag for {} kept sessions: {e}", fds.len());
        }
        self.send_bag(&mut bag);
        if let Some(kept) = self.kept.as_mut() {
            kept.bag = bag;
            kept.dead = 0;
        }
    }

    /// The kernel refuses more descriptors in flight for this user (`ETOOMANYREFS`: kept
    /// sockets count against the open-files limit): sessions that join from now on are not
    /// kept; those in the stored bag still are.
    fn stop_keeping(&mut self, e: &std::io::Error) {
        if let Some(kept) = self.kept.as_mut().filter(|k| !k.refused) {
            kept.refused = true;
            warn!("kept sessions: {e}; sessions joining from now on do not survive a crash");
        }
    }

    /// The supervisor is gone. Kept sessions are left as they are, for the next supervisor's
    /// workers to resume: dropped here without a word and without a shutdown.
    pub(super) fn leave_kept_sessions(&mut self) {
        if self.kept.is_none() {
            return;
        }
        let keys: Vec<usize> =
            self.clients.iter().filter(|(_, c)| c.tracked.is_some()).map(|(k, _)| k).collect();
        for key in &keys {
            let mut client = self.clients.remove(*key);
            let _ = self.poll.registry().deregister(&mut client.stream);
            if let Some(session) = client.session {
                self.sessions.remove(&session);
            }
        }
        info!("lost the supervisor; {} sessions are kept for its successor", keys.len());
    }
}

/// A room line in the worker's shared room buffer: its bytes there and its event number.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoomMark {
    pub start: usize,
    pub end: usize,
    pub seq: u64,
}

/// Queues a line of a replay (the room lines a moved session missed) for `client`.
pub(super) fn queue_replayed(client: &mut Client, line: &str) {
    let start = client.backlog() as u64;
    client.queue_line(line);
    if let Some(tracked) = client.tracked.as_mut() {
        let start = tracked.written + start;
        tracked.replayed.push((start, start + line.len() as u64 + 2));
    }
}

impl Tracked {
    /// The replay is complete and ends with room event `last`: its lines are the events up to
    /// there, numbered back from it. (Events the session does not get — its own lines when
    /// `echo` is off — would make the earlier ones seem newer than they are.)
    pub fn replayed_up_to(&mut self, last: u64) {
        let count = self.replayed.len() as u64;
        for (i, (start, end)) in std::mem::take(&mut self.replayed).into_iter().enumerate() {
            let seq = (last + 1 + i as u64).saturating_sub(count);
            self.marks.push_back(Mark { start, end, seq });
        }
    }

    /// The position after `n` bytes were written from this client's `backlog` queued bytes
    /// followed by the shared buffer's room lines from `from` on. Only the room lines not
    /// written whole get marks of their own (the socket's refusal queued them for this client);
    /// for those written whole the shared marks tell the last one. Copying every shared mark
    /// into every client's marks would cost as much as the deliveries themselves.
    pub fn advance_shared(
        &mut self,
        n: usize,
        mid_line: bool,
        backlog: usize,
        from: usize,
        room: &VecDeque<RoomMark>,
    ) -> Position {
        let reached = from + n.saturating_sub(backlog);
        let first = room.partition_point(|m| m.start < from);
        let whole = room.partition_point(|m| m.end <= reached).max(first);
        self.follow_marks(self.written + backlog as u64, from, room, whole);
        let mut position = self.advance(n, mid_line);
        if whole > first {
            self.last_full = room[whole - 1].seq;
            position.last_full = self.last_full;
        }
        position
    }

    /// The room lines of the shared buffer from `from` on come next in this client's stream,
    /// starting at stream position `at`.
    pub fn follow(&mut self, at: u64, from: usize, room: &VecDeque<RoomMark>) {
        let first = room.partition_point(|m| m.start < from);
        self.follow_marks(at, from, room, first);
    }

    /// [`Tracked::follow`] from the shared buffer's mark `first` on.
    fn follow_marks(&mut self, at: u64, from: usize, room: &VecDeque<RoomMark>, first: usize) {
        for m in room.range(first..) {
            let start = at + (m.start - from) as u64;
            self.marks.push_back(Mark { start, end: start + (m.end - m.start) as u64, seq: m.seq });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room lines 5, 6 and 7 in the shared buffer, ten bytes each.
    fn room() -> VecDeque<RoomMark> {
        [
            RoomMark { start: 0, end: 10, seq: 5 },
            RoomMark { start: 10, end: 20, seq: 6 },
            RoomMark { start: 20, end: 30, seq: 7 },
        ]
        .into()
    }

    /// A session 100 bytes into its stream, with line 4 the last it had whole.
    fn tracked() -> Tracked {
        Tracked {
            slot: 0,
            written: 100,
            last_full: 4,
            marks: VecDeque::new(),
            replayed: Vec::new(),
        }
    }

    #[test]
    fn the_position_follows_room_lines_through_partial_writes() {
        let room = room();
        let mut t = tracked();
        // Three bytes of its own (a private line) first, then the room from line 6 on.
        t.follow(103, 10, &room);
        let p = t.advance(2, true);
        assert_eq!((p.written, p.last_full, p.tail), (102, 4, Tail::Other));
        let p = t.advance(6, true);
        assert_eq!((p.last_full, p.tail), (4, Tail::Room { seq: 6, len: 5 }));
        let p = t.advance(5, false);
        assert_eq!((p.written, p.last_full, p.tail), (113, 6, Tail::Clean));
        let p = t.advance(10, false);
        assert_eq!((p.last_full, p.tail, t.marks.len()), (7, Tail::Clean, 0));
        // A replay of events 8 and 9, known as such once it is complete.
        t.replayed = vec![(123, 130), (130, 140)];
        let p = t.advance(7, false);
        assert_eq!(p.last_full, 7);
        t.replayed_up_to(9);
        let p = t.advance(4, true);
        assert_eq!((p.last_full, p.tail), (8, Tail::Room { seq: 9, len: 4 }));
    }

    #[test]
    fn a_write_into_the_shared_room_lines_gives_the_position_following_them_would() {
        let room = room();
        let fresh = || {
            let mut t = tracked();
            // Its own queue: 3 bytes of a private line, then room line 5 detached earlier.
            t.marks.push_back(Mark { start: 103, end: 113, seq: 5 });
            t
        };
        // 13 queued bytes, then the shared lines 6 and 7; every cut of that write.
        for n in 0..=33 {
            for mid_line in [false, true] {
                let (mut followed, mut shared) = (fresh(), fresh());
                followed.follow(113, 10, &room);
                let expected = followed.advance(n, mid_line);
                let got = shared.advance_shared(n, mid_line, 13, 10, &room);
                assert_eq!(
                    (got.written, got.last_full, got.tail),
                    (expected.written, expected.last_full, expected.tail),
                    "n = {n}"
                );
                assert_eq!(shared.marks.len(), followed.marks.len(), "n = {n}");
                let rest = followed.advance(33 - n, false);
                let shared_rest = shared.advance(33 - n, false);
                assert_eq!(shared_rest.last_full, rest.last_full, "n = {n}");
            }
        }
    }
}
