//! The messages of the bus.
//!
//! The hub is the single authority on the room: it numbers events, owns the nick registry and
//! presence, and renders every line a client will read. Workers only move bytes between sockets
//! and the bus, so a line's text is decided once and is identical on every worker.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Room-wide identity of a connected client, assigned by the hub when it admits the client.
pub type SessionId = u64;

/// A worker-local handle for a connection that the hub has not admitted yet.
pub type ConnId = u64;

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
        }
    }
}

/// Worker → hub.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToHub {
    /// The worker is up and accepting on its slot's listeners. `handoff` is the version of
    /// [`super::handoff::Transfer`] it speaks; `version` the release it runs.
    Hello {
        slot: usize,
        pid: u32,
        generation: u64,
        handoff: u32,
        version: String,
    },
    /// Sent every second; a worker that stays silent is presumed hung.
    Heartbeat,
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
    Who {
        session: SessionId,
    },
    Msg {
        session: SessionId,
        to: String,
        text: String,
    },
    History {
        session: SessionId,
        count: Option<usize>,
    },
    Leave {
        session: SessionId,
        reason: LeaveReason,
    },
    /// Hand-off, old worker: every session has been sent to the successor.
    HandoffDone {
        sessions: usize,
    },
    /// Hand-off, new worker: this session is now here; it has seen every room event up to
    /// `last_seq`.
    Adopt {
        session: SessionId,
        last_seq: u64,
    },
}

/// Hub → worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// First frame a worker reads: who it is and the config text it must run with (the text the
    /// supervisor validated, not whatever is on disk by then).
    Setup { slot: usize, generation: u64, config: String, config_path: String },
    /// Answer to Hello: the last room sequence number numbered so far. Everything the worker
    /// receives after this is newer; it is the worker's position until the next room event.
    Sync { seq: u64 },
    /// The connection is in the room; `lines` (welcome, then history) go out before anything
    /// else. Room events that follow this frame are the ones the client must see.
    Admitted { conn: ConnId, session: SessionId, lines: Vec<String> },
    /// The connection may not enter; the line is its last.
    Refused { conn: ConnId, line: String },
    /// A numbered room line for every client except `skip`.
    Room { seq: u64, skip: Option<SessionId>, line: String },
    /// Lines for one client only (errors, `/who`, private messages, history).
    Direct { session: SessionId, lines: Vec<String> },
    /// The hub processed the session's Leave: nothing more will come for it, so the worker can
    /// flush and close. (Waiting for this lets the answers to a client's last requests, say
    /// `/who` piped into `nc` before EOF, still reach it.)
    Left { session: SessionId },
    /// Tell every client the server is going down, flush, exit.
    Shutdown,
    /// Reload, old worker: stop accepting and send every session over the hand-off channel
    /// attached to this frame.
    HandOff,
    /// Reload, new worker: sessions will arrive on the hand-off channel attached to this frame.
    Receive,
    /// After `Adopt`: the room events the session missed while moving (those after its
    /// `last_seq`), after which it is back in the room.
    Resume { session: SessionId, lines: Vec<String> },
    /// Reload without hand-off, old worker: stop accepting, keep serving the clients for at
    /// most `timeout_ms`, then ask them to reconnect.
    Drain { timeout_ms: u64 },
    /// Hand-off finished and the hub routes everything to the successor: exit.
    Exit,
}
