//! Sessions kept through a crash of the supervisor (SPEC §8), the supervisor's part.
//!
//! While it runs, it stores what its workers send (`WorkerReport::Kept`): each worker's session
//! table and its current bag of sockets, under names of their own (`table-RUN-ID`,
//! `bag-RUN-ID-N`; RUN tells this supervisor's names from its predecessor's), removing a
//! worker's previous bag when a new one comes and all its entries when the worker is gone.
//!
//! Started after a crash, it takes the predecessor's tables and bags back (`collect`), pairs
//! each recorded session with its socket (by inode: a crash in the middle of a reload leaves
//! a session in two bags and two tables, the record that got further wins), and keeps in the
//! room only the members it found a socket for. Each session is then handed to a new worker
//! through the reload's hand-off path (`Receive`, then `Transfer::Session` frames, written by
//! a thread of its own) with what the socket still needs: the rest of a room line written in
//! part, rendered again from the stored room, then `* the server restarted; …`. Adopting it,
//! the worker asks the hub for the room lines after the last one it had whole. Once every
//! session is adopted (or after [`ADOPT_TIMEOUT`]) the predecessor's entries leave the store.

use super::Supervisor;
use super::hub::WorkerId;
use super::hub::{BACK, GIVE_UP, REMOTE, UNADOPTED};
use super::upgrade::state::{SavedHub, SavedMember};
use crate::bus::WorkerOrder;
use crate::bus::frame;
use crate::bus::handoff::{SessionState, Transfer};
use crate::bus::message::{KeptFile, SessionId};
use crate::protocol::decoder::PendingInput;
use crate::store::table::{self, Entry, Tail};
use crate::store::{self, bag};
use log::{info, warn};
use nix::sys::socket::{self, ControlMessage, MsgFlags, sendmsg};
use std::collections::{HashMap, HashSet};
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// What every resumed client is told, once.
pub const NOTICE: &str = "* the server restarted; lines sent in the last moment may not have \
                          reached the room";
/// Sessions not adopted by then are given up (the room sees them leave).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The entries this supervisor stored for its workers.
pub(super) struct KeptFiles {
    run: String,
    by_worker: HashMap<WorkerId, WorkerFiles>,
}

#[derive(Default)]
struct WorkerFiles {
    table: Option<String>,
    bag: Option<String>,
    bags: u64,
}

impl KeptFiles {
    /// `None` outside systemd: nothing is kept.
    pub(super) fn new() -> Option<KeptFiles> {
        if !store::available() {
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run = format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff);
        Some(KeptFiles { run, by_worker: HashMap::new() })
    }

    /// Stores a file worker `id` sent; a bag replaces the worker's previous one.
    pub(super) fn store(&mut self, id: WorkerId, file: KeptFile, fd: OwnedFd) {
        let files = self.by_worker.entry(id).or_default();
        let name = match file {
            KeptFile::Table => format!("table-{}-{}", self.run, id.0),
            KeptFile::Bag => {
                files.bags += 1;
                format!("bag-{}-{}-{}", self.run, id.0, files.bags)
            }
        };
        if let Err(e) = store::store(&name, &[fd.as_fd()]) {
            return warn!("fd store: cannot store {name}: {e}; its sessions would not survive");
        }
        let old = match file {
            KeptFile::Table => files.table.replace(name),
            KeptFile::Bag => files.bag.replace(name),
        };
        if let Some(old) = old {
            store::remove(&old);
        }
    }

    /// Worker `id` is gone: its sessions went with it or to its successor.
    pub(super) fn forget(&mut self, id: WorkerId) {
        if let Some(files) = self.by_worker.remove(&id) {
            files.table.iter().chain(files.bag.iter()).for_each(|name| store::remove(name));
        }
    }

    /// A stop: nothing is kept.
    pub(super) fn clear(self) {
        for files in self.by_worker.into_values() {
            files.table.iter().chain(files.bag.iter()).for_each(|name| store::remove(name));
        }
    }
}

/// Whether a stored entry's name is one of the kept sessions'.
pub(super) fn is_kept(name: &str) -> bool {
    name.starts_with("table-") || name.starts_with("bag-")
}

/// The sessions a predecessor kept, being handed to the new workers.
pub(super) struct Restoring {
    started: Instant,
    /// Sessions to send, by slot.
    by_slot: Vec<Vec<(SessionState, OwnedFd)>>,
    /// Sessions not adopted yet.
    pending: HashSet<SessionId>,
    total: usize,
    /// The predecessor's entries, removed once done.
    stale: Vec<String>,
    /// The predecessor's files, kept open until then.
    _files: Vec<OwnedFd>,
}

/// In cluster mode, the kept sessions until the hub has read the stream on from the stored
/// snapshot to its end: members that joined after the snapshot are known only then.
pub(super) struct Later {
    entries: Vec<(String, OwnedFd)>,
    since: Instant,
}

impl Later {
    /// Marks `room`'s own members as waiting for a worker (joins read again from the stream
    /// are, too: `hub/cluster.rs`).
    pub(super) fn new(entries: Vec<(String, OwnedFd)>, room: &mut SavedHub) -> Later {
        for m in room.members.iter_mut().filter(|m| m.worker != REMOTE.0) {
            m.worker = UNADOPTED.0;
        }
        Later { entries, since: Instant::now() }
    }
}

/// What becomes of the sessions kept through a crash.
pub(super) enum Fate<'a> {
    /// Resumed against `room`'s recent events. `back`: they were told the cluster's room was
    /// unreachable before the crash, and are told it is back after the notice.
    Resume { room: &'a mut SavedHub, back: bool },
    /// Told this line and ended: there is no room to resume them in.
    End(&'static str),
}

/// What kept sessions are told when no stored room came with them.
pub const NO_ROOM: &str = "* server stopped unexpectedly, please reconnect";

/// Pairs the stored tables' records with the stored bags' sockets and, to resume them, marks
/// the room's members as waiting for a worker; what each socket still needs is worked out
/// against the room's recent events.
pub(super) fn collect(
    entries: Vec<(String, OwnedFd)>,
    fate: Fate<'_>,
    slots: usize,
) -> Option<Restoring> {
    if entries.is_empty() {
        return None;
    }
    let stale: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    let mut sockets: HashMap<u64, OwnedFd> = HashMap::new();
    let mut records: HashMap<u64, Entry> = HashMap::new();
    let mut twice = 0;
    for (name, fd) in &entries {
        if name.starts_with("bag-") {
            for socket in bag::empty(fd) {
                match sockets.entry(bag::inode(socket.as_fd())) {
                    std::collections::hash_map::Entry::Occupied(_) => twice += 1,
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(socket);
                    }
                }
            }
        } else {
            for entry in table::read(fd) {
                // The record that got further; of two that got as far (a session moved by a
                // reload, not written to since), the one that knows what it had whole.
                let key = |e: &Entry| (e.position.written, std::cmp::Reverse(e.position.last_full));
                let newer = records.get(&entry.session).is_none_or(|e| key(&entry) > key(e));
                if newer {
                    records.insert(entry.session, entry);
                }
            }
        }
    }
    let files = entries.into_iter().map(|(_, fd)| fd).collect();
    let (room, back) = match fate {
        Fate::Resume { room, back } => (room, back),
        Fate::End(line) => {
            warn!("{} kept sessions end: {line}", sockets.len());
            farewell(&records, sockets, line);
            for name in &stale {
                store::remove(name);
            }
            return None;
        }
    };
    let mut by_slot: Vec<Vec<(SessionState, OwnedFd)>> =
        (0..slots.max(1)).map(|_| Vec::new()).collect();
    let mut pending = HashSet::new();
    let mut found = HashSet::new();
    // In cluster mode the room lists other hosts' members too; only this host's are resumed.
    let local = |m: &SavedMember| m.worker != REMOTE.0;
    for (session, entry) in records {
        let Some(socket) = sockets.remove(&entry.inode) else { continue };
        if !room.members.iter().any(|m| local(m) && m.session.0 == session) {
            continue;
        }
        found.insert(session);
        let mut state = resume_state(&entry, table::socket_written(socket.as_fd()), room);
        if back {
            state.output.extend_from_slice(format!("{BACK}\r\n").as_bytes());
        }
        pending.insert(state.session);
        let slot = pending.len() % by_slot.len();
        by_slot[slot].push((state, socket));
    }
    // Members without a socket stay until the others are back, then leave as lost like any
    // session not adopted (`check_restored`).
    let mut before = 0;
    for m in room.members.iter_mut().filter(|m| local(m)) {
        m.worker = UNADOPTED.0;
        before += 1;
    }
    info!(
        "the server restarted: {} sessions kept ({} stored entries, {twice} sockets found in two \
         bags), {} members without a kept socket leave",
        found.len(),
        stale.len(),
        before - found.len()
    );
    let total = pending.len();
    Some(Restoring { started: Instant::now(), by_slot, pending, total, stale, _files: files })
}

/// Ends sessions that cannot be resumed with `line`, at the start of a line of its own, so
/// nobody is dropped without a word. Only plain TCP sessions are kept, so the line goes on the
/// socket as it is (none if its send buffer is full). What the client sent meanwhile is read
/// and dropped first: closing a socket with unread input resets it, and a reset can discard
/// the line before the client reads it.
fn farewell(records: &HashMap<u64, Entry>, sockets: HashMap<u64, OwnedFd>, line: &str) {
    let by_inode: HashMap<u64, &Entry> = records.values().map(|e| (e.inode, e)).collect();
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    for (inode, socket) in sockets {
        let fd = socket.as_raw_fd();
        let at_line_start = by_inode.get(&inode).is_some_and(|e| {
            matches!(e.position.tail, Tail::Clean)
                && table::socket_written(socket.as_fd()) == e.position.written
        });
        let text = if at_line_start { format!("{line}\r\n") } else { format!("\r\n{line}\r\n") };
        let _ = socket::send(fd, text.as_bytes(), flags);
        let mut input = [0u8; 16 * 1024];
        while matches!(socket::recv(fd, &mut input, flags), Ok(n) if n > 0) {}
        let _ = socket::shutdown(fd, socket::Shutdown::Both);
    }
}

/// The state a session is resumed with: its position checked against the socket's own count
/// of what was written (`written`), the rest of a room line written in part, and the notice.
fn resume_state(entry: &Entry, written: u64, room: &SavedHub) -> SessionState {
    let mut position = entry.position;
    let line = |seq: u64| {
        room.events.iter().find(|e| e.seq == seq).map(|e| format!("{}\r\n", e.line).into_bytes())
    };
    // Written after the record was: the crash came between a write and its record. The bytes
    // are taken as the room lines that followed, in order (what a write mostly carries).
    let mut extra = written.saturating_sub(position.written);
    if extra > 0 {
        warn!("session {}: {extra} bytes written after its last record", entry.session);
    }
    while extra > 0 {
        let (seq, done) = match position.tail {
            Tail::Room { seq, len } => (seq, len),
            _ => {
                let next = room.events.iter().find(|e| {
                    e.seq > position.last_full && e.skip != Some(SessionId(entry.session))
                });
                match next {
                    Some(e) => (e.seq, 0),
                    None => break,
                }
            }
        };
        let Some(bytes) = line(seq) else { break };
        let left = bytes.len() as u64 - done;
        if extra >= left {
            extra -= left;
            position.last_full = seq;
            position.tail = Tail::Clean;
        } else {
            position.tail = Tail::Room { seq, len: done + extra };
            extra = 0;
        }
    }
    let (last_seq, mut output, mid_line) = match position.tail {
        Tail::Clean => (position.last_full, Vec::new(), false),
        Tail::Room { seq, len } => match line(seq) {
            Some(bytes) => (seq, bytes[(len as usize).min(bytes.len())..].to_vec(), true),
            None => (seq, b"\r\n".to_vec(), true),
        },
        Tail::Other => (position.last_full, b"\r\n".to_vec(), true),
    };
    output.extend_from_slice(NOTICE.as_bytes());
    output.extend_from_slice(b"\r\n");
    SessionState {
        session: SessionId(entry.session),
        input: PendingInput {
            ready: Vec::new(),
            partial: entry.input.clone(),
            discarding: false,
            telnet: Vec::new(),
        },
        output,
        mid_line,
        last_seq,
        tokens: entry.tokens,
        idle_ms: 0,
        leaving: false,
        eof: false,
        transport: None,
    }
}

/// Writes the sessions on the hand-off channel, blocking, each frame with its socket.
fn write_sessions(channel: UnixStream, sessions: Vec<(SessionState, OwnedFd)>) {
    let mut channel = channel;
    for (state, socket) in sessions {
        let session = state.session;
        let mut bytes = Vec::new();
        if let Err(e) = frame::encode_into(&Transfer::Session(state), &mut bytes) {
            warn!("session {session}: {e}");
            continue;
        }
        let raw = [socket.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [IoSlice::new(&bytes)];
        let sent = match sendmsg::<()>(channel.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(n) => n,
            Err(e) => return warn!("handing kept sessions to a worker: {e}"),
        };
        if let Err(e) = channel.write_all(&bytes[sent..]) {
            return warn!("handing kept sessions to a worker: {e}");
        }
    }
}

impl Supervisor {
    /// A worker is up: the kept sessions meant for its slot go to it.
    pub(super) fn hand_restored(&mut self, id: WorkerId, slot: usize) {
        let Some(restoring) = self.restoring.as_mut() else { return };
        let Some(sessions) = restoring.by_slot.get_mut(slot).map(std::mem::take) else { return };
        if sessions.is_empty() {
            return;
        }
        let (ours, theirs) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => return warn!("a channel for the kept sessions: {e}"),
        };
        self.send_fds(id, WorkerOrder::Receive, vec![theirs.into()]);
        let spawned = std::thread::Builder::new()
            .name("kept-sessions".into())
            .spawn(move || write_sessions(ours, sessions));
        if let Err(e) = spawned {
            warn!("a thread for the kept sessions: {e}");
        }
    }

    /// In cluster mode, once the stream is read to its end: the kept sessions are paired with
    /// the room as it is now and go to the workers. If that takes longer than
    /// `outage_timeout`, they end, and the members waiting for them leave.
    pub(super) fn pair_kept_later(&mut self) {
        let Some(later) = self.kept_later.as_ref() else { return };
        let resuming = self.hub.cluster_resuming();
        if resuming && later.since.elapsed() < self.config.cluster.outage_timeout {
            return;
        }
        let Some(later) = self.kept_later.take() else { return };
        if resuming {
            warn!("cluster: the stream was not read to its end in time; kept sessions end");
            self.restoring = collect(later.entries, Fate::End(GIVE_UP), self.slots.len());
            self.hub.worker_lost(UNADOPTED, &mut super::workers::Mailboxes(&mut self.workers));
            return;
        }
        let mut room = self.hub.save();
        let fate = Fate::Resume { room: &mut room, back: self.hub.take_told_unreachable() };
        self.restoring = collect(later.entries, fate, self.slots.len());
        let ready: Vec<(WorkerId, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.accepting())
            .map(|(id, w)| (*id, w.slot))
            .collect();
        for (id, slot) in ready {
            self.hand_restored(id, slot);
        }
    }

    /// Once every kept session is adopted (or the time is up): those left over leave the room,
    /// the predecessor's entries the store, and the log says how long it took.
    pub(super) fn check_restored(&mut self) {
        let Some(restoring) = self.restoring.as_mut() else { return };
        let hub = &self.hub;
        restoring.pending.retain(|s| hub.member_worker(*s) == Some(UNADOPTED));
        let elapsed = restoring.started.elapsed();
        if !restoring.pending.is_empty() && elapsed < ADOPT_TIMEOUT {
            return;
        }
        let Some(restoring) = self.restoring.take() else { return };
        let lost = restoring.pending.len();
        info!(
            "resumed {} of {} sessions kept through the crash in {} ms",
            restoring.total - lost,
            restoring.total,
            elapsed.as_millis()
        );
        self.hub.worker_lost(UNADOPTED, &mut super::workers::Mailboxes(&mut self.workers));
        for name in &restoring.stale {
            store::remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::table::Position;
    use crate::supervisor::hub::Hub;
    use crate::supervisor::upgrade::state::SavedEvent;

    /// A room whose events 1..=3 are `line N`, event 2 skipping session 9.
    fn room() -> SavedHub {
        let mut room = Hub::new(&Config::default()).save();
        room.events = (1..=3)
            .map(|seq| SavedEvent {
                seq,
                age_ms: 0,
                skip: (seq == 2).then_some(SessionId(9)),
                line: format!("line {seq}"),
            })
            .collect();
        room
    }

    fn entry(written: u64, last_full: u64, tail: Tail) -> Entry {
        let position = Position { written, last_full, tail };
        Entry { session: 7, inode: 1, position, tokens: Some(1.5), input: b"hal".to_vec() }
    }

    fn notice(prefix: &str) -> Vec<u8> {
        format!("{prefix}{NOTICE}\r\n").into_bytes()
    }

    #[test]
    fn a_session_at_a_line_end_goes_on_after_its_last_whole_line() {
        let state = resume_state(&entry(100, 2, Tail::Clean), 100, &room());
        assert_eq!((state.last_seq, state.mid_line), (2, false));
        assert_eq!(state.output, notice(""));
        assert_eq!((state.input.partial.as_slice(), state.tokens), (&b"hal"[..], Some(1.5)));
    }

    #[test]
    fn a_room_line_written_in_part_gets_its_rest_before_the_notice() {
        let state = resume_state(&entry(100, 2, Tail::Room { seq: 3, len: 4 }), 100, &room());
        assert_eq!((state.last_seq, state.mid_line), (3, true));
        assert_eq!(state.output, notice(" 3\r\n"));
    }

    #[test]
    fn a_private_line_written_in_part_is_ended_before_the_notice() {
        let state = resume_state(&entry(100, 1, Tail::Other), 100, &room());
        assert_eq!(state.last_seq, 1);
        assert_eq!(state.output, notice("\r\n"));
    }

    #[test]
    fn bytes_written_after_the_record_are_taken_as_the_next_room_lines() {
        // "line 2\r\n" is 8 bytes, then 3 of "line 3\r\n".
        let state = resume_state(&entry(100, 1, Tail::Clean), 111, &room());
        assert_eq!(state.last_seq, 3);
        assert_eq!(state.output, notice("e 3\r\n"));
        // Session 9 never had event 2: the bytes are event 3's.
        let mut skipped = entry(100, 1, Tail::Clean);
        skipped.session = 9;
        let state = resume_state(&skipped, 108, &room());
        assert_eq!((state.last_seq, state.mid_line), (3, false));
    }
}
