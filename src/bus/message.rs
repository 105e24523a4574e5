//! The messages of the bus.
//!
//! Each direction has one envelope with two kinds of message, and the split follows who handles
//! them. Control messages are about the worker process itself (it is up, alive, told to hand
//! off, drain or exit): the supervisor's worker management sends and reads them. Room messages
//! are about the room and its sessions: on the supervisor's side only the hub
//! (`supervisor::hub`) reads and writes them, so the types keep worker management out of the
//! room and the room out of worker management.
//!
//! The hub is the single authority on the room: it numbers events, owns the nick registry and
//! presence, and renders every line a client will read, so a line's text is decided once and is
//! identical on every worker. Every room event also says what it did to the room
//! ([`RoomEvent`]), so each worker keeps its own copy of presence and history and answers
//! `/who` and `/history` itself: an answer is then the asker's output alone, counted against
//! its own backlog, and no client request can make the hub build large frames. (The hub only
//! echoes the question, which puts the answer in its place in the room's order.)

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Room-wide identity of a connected client, assigned by the hub when it admits the client.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct SessionId(pub u64);

/// A worker-local handle for a connection that the hub has not admitted yet.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl SessionId {
    /// The id handed out after this one.
    pub fn next(self) -> SessionId {
        SessionId(self.0 + 1)
    }
}

impl ConnId {
    /// The id handed out after this one.
    pub fn next(self) -> ConnId {
        ConnId(self.0 + 1)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a client left the room, as shown in `* NICK left (REASON)`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LeaveReason {
    Quit(Option<String>),
    Closed,
    Lost,
    TooSlow,
    Idle,
    /// Closed by a draining worker at the end of a reload without hand-off.
    Restart,
    /// `chatd kick`, with its reason.
    Kicked(Option<String>),
    /// `chatd ban` (or `[moderation] banned` on reload) matched the client's address; the room
    /// sees it as a kick.
    Banned(Option<String>),
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaveReason::Quit(None) => f.write_str("quit"),
            LeaveReason::Quit(Some(reason)) => write!(f, "quit: {reason}"),
            LeaveReason::Closed => f.write_str("connection closed"),
            LeaveReason::Lost => f.write_str("connection lost"),
            LeaveReason::TooSlow => f.write_str("too slow"),
            LeaveReason::Idle => f.write_str("idle"),
            LeaveReason::Restart => f.write_str("server restarting"),
            LeaveReason::Kicked(None) | LeaveReason::Banned(None) => f.write_str("kicked"),
            LeaveReason::Kicked(Some(reason)) | LeaveReason::Banned(Some(reason)) => {
                write!(f, "kicked: {reason}")
            }
        }
    }
}

/// What a numbered room line did to the room, for the workers' copies of presence and history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Chat,
    Me,
    Join {
        session: SessionId,
        nick: String,
    },
    Leave {
        session: SessionId,
    },
    Nick {
        session: SessionId,
        nick: String,
    },
    /// `chatd say`.
    Notice,
}

impl RoomEvent {
    /// Chat and `/me` lines: what history keeps by default.
    pub fn is_talk(&self) -> bool {
        matches!(self, RoomEvent::Chat | RoomEvent::Me)
    }
}

/// A question a worker answers from its own copy of the room.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Who,
    History(Option<usize>),
}

/// Worker → supervisor.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToHub {
    Control(WorkerReport),
    Room(RoomRequest),
}

/// Supervisor → worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    Control(WorkerOrder),
    Room(RoomUpdate),
}

/// Worker → supervisor, about the worker process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WorkerReport {
    /// The worker is up and accepting on its slot's listeners. `handoff` is the version of
    /// [`super::handoff::Transfer`] it speaks; `version` the release it runs.
    Hello { slot: usize, pid: u32, generation: u64, handoff: u32, version: String },
    /// Sent every second, and once more as the worker exits; a worker that stays silent is
    /// presumed hung. Carries what the worker counted so far, for the metrics.
    Heartbeat { counters: WorkerCounters },
    /// Hand-off, old worker: every session has been sent to the successor.
    HandoffDone { sessions: usize },
    /// Hand-off, old worker: the hand-off could not start (its channel did not arrive, as
    /// happens to a process at its open-files limit); it drains instead.
    Draining,
    /// Answer to [`WorkerOrder::Inspect`]: the worker's sessions, in frames of bounded size;
    /// `last` on the final one.
    Sessions { id: u64, sessions: Vec<SessionLoad>, last: bool },
    /// Under systemd: a file that keeps this worker's sessions through a crash of the
    /// supervisor, attached, for the supervisor to store (`crate::store`). A new bag replaces
    /// the worker's previous one.
    Kept { file: KeptFile },
}

/// What a [`WorkerReport::Kept`] carries.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptFile {
    /// The session table (`crate::store::table`).
    Table,
    /// A bag of the sessions' sockets (`crate::store::bag`).
    Bag,
}

/// What only the worker serving a session knows about it, for `chatd who`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLoad {
    pub session: SessionId,
    /// Since its last complete line.
    pub idle_ms: u64,
    /// Output waiting to be written to it, in bytes.
    pub queued: u64,
    /// What its connection speaks.
    pub transport: crate::listener::Kind,
}

/// What a worker counted since it started (`chatd_*_total` in `src/metrics/`). Cumulative, so a
/// lost or late heartbeat loses nothing; the supervisor adds a worker's last report to the
/// totals when the worker is gone, so the totals never go back.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Room lines given to clients: one per line per client in the room.
    pub deliveries: u64,
    /// Times a client's input was held back by its rate limit.
    pub rate_limited: u64,
    /// TLS connections closed before their handshake was done: refused, failed or timed out.
    pub tls_rejected: u64,
}

impl WorkerCounters {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &WorkerCounters) {
        self.connections += other.connections;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.deliveries += other.deliveries;
        self.rate_limited += other.rate_limited;
        self.tls_rejected += other.tls_rejected;
    }
}

/// Supervisor → worker, about the worker process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WorkerOrder {
    /// First frame a worker reads: who it is and the config text it must run with (the text the
    /// supervisor validated, not whatever is on disk by then).
    Setup { slot: usize, generation: u64, config: String, config_path: String },
    /// Tell every client the server is going down, flush, exit.
    Shutdown,
    /// Reload, old worker: stop accepting and send every session over the hand-off channels
    /// attached to this frame, dealt out evenly. Several only to a worker whose hand-off
    /// version is at least `handoff::SEVERAL_CHANNELS_SINCE`; the supervisor sends an old
    /// worker no other descriptor.
    HandOff,
    /// Reload, new worker: sessions will arrive on the hand-off channel attached to this frame.
    Receive,
    /// Reload without hand-off, old worker: stop accepting, keep serving the clients for at
    /// most `timeout_ms`, then ask them to reconnect.
    Drain { timeout_ms: u64 },
    /// Hand-off finished and the hub routes everything to the successor: exit.
    Exit,
    /// `chatd who`: report every session with [`WorkerReport::Sessions`], quoting `id`.
    Inspect { id: u64 },
}

/// Worker → hub: what clients ask of the room.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RoomRequest {
    /// A new connection asks to enter the room.
    Join {
        conn: ConnId,
        addr: SocketAddr,
    },
    Say {
        session: SessionId,
        text: String,
    },
    Me {
        session: SessionId,
        text: String,
    },
    Nick {
        session: SessionId,
        nick: String,
    },
    Msg {
        session: SessionId,
        to: String,
        text: String,
    },
    /// `/who` or `/history`: the hub only echoes it back ([`RoomUpdate::Answer`]), so the
    /// worker answers from its copy of the room at the asker's place in the room's order, after
    /// the effect of whatever the asker sent before.
    Query {
        session: SessionId,
        query: Query,
    },
    Leave {
        session: SessionId,
        reason: LeaveReason,
    },
    /// Hand-off, new worker: this session is now here; it has seen every room event up to
    /// `last_seq`. The hub routes the session here from now on and replays what it missed.
    Adopt {
        session: SessionId,
        last_seq: u64,
    },
}

/// Hub → worker: the room as it happens.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RoomUpdate {
    /// Answer to Hello: the last room sequence number numbered so far. Everything the worker
    /// receives after this is newer; it is the worker's position until the next room event.
    /// It starts the room's state as of `seq`: the [`RoomUpdate::Snapshot`] frames that follow
    /// replace whatever the worker had.
    Sync { seq: u64 },
    /// Part of the room's state at the last `Sync`: who is in the room and the history, oldest
    /// first. Split over several frames so that none comes near the frame limit.
    Snapshot { members: Vec<(SessionId, String)>, history: Vec<String> },
    /// The connection is in the room; `welcome`, then the worker's own history, go out before
    /// anything else. Room events that follow this frame are the ones the client must see.
    Admitted { conn: ConnId, session: SessionId, welcome: String },
    /// The connection may not enter; the line is its last.
    Refused { conn: ConnId, line: String },
    /// A numbered room line for every client except `skip`.
    Line { seq: u64, skip: Option<SessionId>, line: String, event: RoomEvent },
    /// Lines for one client only (errors, private messages); long ones come in several frames.
    Direct { session: SessionId, lines: Vec<String> },
    /// The hub processed the session's Leave: nothing more will come for it, so the worker can
    /// flush and close. (Waiting for this lets the answers to a client's last requests, say
    /// `/who` piped into `nc` before EOF, still reach it.)
    Left { session: SessionId },
    /// After `Adopt`: the room events the session missed while moving (those after its
    /// `last_seq`), after which it is back in the room. When they do not fit one frame, the
    /// first ones come in `Replay` frames before it.
    Resume { session: SessionId, lines: Vec<String> },
    /// The first part of a long `Resume`.
    Replay { session: SessionId, lines: Vec<String> },
    /// The echo of a [`RoomRequest::Query`]: answer it now, from the worker's copy of the room.
    Answer { session: SessionId, query: Query },
    /// An audit line (a connect, a rename, a disconnect of one of the worker's sessions) for
    /// the worker to log under its own name.
    Log { line: String },
}

/// Line bytes per frame when a list of lines is split over several frames: far below
/// [`super::frame::MAX_FRAME_LEN`] even with one maximal line (1 MiB) over it.
pub const LINES_PER_FRAME_BYTES: usize = 1024 * 1024;

/// Splits `lines` into runs of at most [`LINES_PER_FRAME_BYTES`] (and at least one line each),
/// in order. An empty list gives one empty run, so an answer is always sent.
pub fn split_lines(lines: Vec<String>) -> Vec<Vec<String>> {
    split_by_size(lines, LINES_PER_FRAME_BYTES, |line| line.len())
}

/// Splits `items` into runs whose `size` adds up to at most `budget` (a run has at least one
/// item, whatever its size), keeping their order; an empty list gives one empty run.
pub fn split_by_size<T>(items: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs = vec![Vec::new()];
    let mut used = 0;
    for item in items {
        // Per item, postcard adds a length prefix of a few bytes.
        let n = size(&item) + 8;
        let current = runs.last().map_or(0, Vec::len);
        if current > 0 && used + n > budget {
            runs.push(Vec::new());
            used = 0;
        }
        used += n;
        if let Some(run) = runs.last_mut() {
            run.push(item);
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_order_and_bounds_each_run() {
        let lines: Vec<String> = (0..100).map(|i| format!("{i:0>20000}")).collect();
        let runs = split_by_size(lines.clone(), 100_000, String::len);
        assert!(runs.len() > 1);
        for run in &runs {
            assert!(!run.is_empty());
            assert!(run.iter().map(|l| l.len() + 8).sum::<usize>() <= 100_000);
        }
        assert_eq!(runs.concat(), lines);
        assert_eq!(split_lines(Vec::new()), vec![Vec::<String>::new()]);
        // One item over the budget still travels, alone.
        let big = vec!["x".repeat(10), "y".repeat(200), "z".into()];
        assert_eq!(split_by_size(big.clone(), 50, String::len).len(), 3);
    }
}
