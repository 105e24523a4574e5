//! Session hand-off between worker generations.
//!
//! On reload the old worker sends each live session to a successor over a dedicated socketpair
//! (created by the supervisor and given to both over their buses; one per successor when the
//! sessions are dealt out over several): the TCP socket itself as `SCM_RIGHTS`, plus everything
//! needed to carry on as if nothing happened: unread input, unsent output, the last room event
//! it was given, rate-limit and idle state, and the state of its transport (a TLS session, a WebSocket, or both). Byte fields are encoded as byte strings (a length,
//! then the bytes), not as sequences of numbers: the same bytes on the wire, copied at once
//! rather than one by one. The frames use the bus framing; [`VERSION`] is exchanged in `Hello`
//! so that a worker never sends sessions to a binary that would misread them (the reload drains
//! instead).

use super::message::SessionId;
use crate::protocol::decoder::PendingInput;
use serde::{Deserialize, Serialize};

/// Version of [`Transfer`] and [`SessionState`], and of how they travel; bump it when either
/// changes.
pub const VERSION: u32 = 6;

/// The first [`VERSION`] whose old workers take several channels with `HandOff` and deal their
/// sessions out over them evenly; an older one is given a single channel.
pub const SEVERAL_CHANNELS_SINCE: u32 = 4;

/// Channels one old worker is given at most. Each is a descriptor it must have free, and
/// workers keep twice that many in reserve (`FD_RESERVE` in `src/worker/accept.rs`).
pub const MAX_CHANNELS: usize = 4;

/// One live session as it leaves the old worker.
#[derive(Serialize, Deserialize, Debug)]
pub struct SessionState {
    pub session: SessionId,
    /// Input not processed yet: lines not yet acted on, the partial line, an unfinished telnet
    /// command (`LineDecoder::export`).
    pub input: PendingInput,
    /// Output queued but not yet written to the socket.
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// The socket last got part of a line: `output` starts with the rest of it.
    pub mid_line: bool,
    /// The last room event this session was given.
    pub last_seq: u64,
    /// Rate limiter tokens left, if rate limiting is on.
    pub tokens: Option<f64>,
    /// Time since the client's last complete line.
    pub idle_ms: u64,
    /// The client had asked to leave; the hub's confirmation is still to come.
    pub leaving: bool,
    /// The client had closed its side.
    pub eof: bool,
    /// The state of its transport's layers; `None` for lines straight over TCP.
    pub transport: Option<Box<TransportState>>,
}

/// A layered transport as data (the transport contract in docs/tls.md).
#[derive(Serialize, Deserialize, Debug)]
pub enum TransportState {
    /// A TLS session: its record state, and records sealed but not yet written, which go out
    /// before anything the new worker seals.
    Tls {
        session: crate::tls::SessionState,
        #[serde(with = "serde_bytes")]
        unsent: Vec<u8>,
    },
    /// A WebSocket over TCP: its framing state, and frames not yet written.
    Web {
        socket: crate::web::WebState,
        #[serde(with = "serde_bytes")]
        unsent: Vec<u8>,
    },
    /// A WebSocket inside TLS: both states, and records not yet written.
    TlsWeb {
        session: crate::tls::SessionState,
        socket: crate::web::WebState,
        #[serde(with = "serde_bytes")]
        unsent: Vec<u8>,
    },
}

/// Old worker → new worker.
#[derive(Serialize, Deserialize, Debug)]
pub enum Transfer {
    /// A session; its socket is attached to the frame.
    Session(SessionState),
    /// Lines the hub sent to the old worker for a session that had already moved.
    Direct { session: SessionId, lines: Vec<String> },
    /// The hub's confirmation of a leave, forwarded likewise.
    Left { session: SessionId },
    /// A piece of a session's unsent output, ahead of the session itself: output longer than
    /// one piece travels in several frames, so that none nears the bus frame limit. The pieces
    /// come in order, then the session with the rest.
    Output {
        session: SessionId,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}
