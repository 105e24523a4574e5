//! What chatd does with a frame it cannot read, on every stream it reads frames from: a
//! worker's bus as the supervisor reads it, the bus as a worker reads it, the hand-off channel
//! between two workers, and the control socket.
//!
//! One policy for all of them: the frame is logged with the peer that sent it, and that peer's
//! connection is closed, only that one. A length-prefixed stream that delivered one bad frame
//! is out of step (the next length would be read from the middle of something), and a control
//! connection carries a single request anyway. One broken peer never takes another with it.
//!
//! A malformed frame from inside chatd (a worker, the supervisor, a predecessor) is a bug or a
//! corrupted stream and is logged as an error; one from a control client is a stranger's
//! mistake and is logged as a warning.

use std::fmt;

/// Who sent a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A worker, as the supervisor sees its bus.
    Worker { slot: usize, pid: u32 },
    /// The supervisor, as a worker sees its bus.
    Supervisor,
    /// The previous generation's worker, sending sessions over a hand-off channel.
    Predecessor,
    /// The next generation's worker, receiving sessions over a hand-off channel.
    Successor,
    /// A `chatd reload|status|stop` (or anything else) on the control socket.
    ControlClient { pid: i32, uid: u32 },
}

impl Peer {
    /// Part of chatd itself: a bad frame from it is a bug, not a stranger's mistake.
    fn internal(&self) -> bool {
        !matches!(self, Peer::ControlClient { .. })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Worker { slot, pid } => write!(f, "slot {slot}: worker pid {pid}"),
            Peer::Supervisor => f.write_str("the supervisor"),
            Peer::Predecessor => f.write_str("the previous worker"),
            Peer::Successor => f.write_str("the next worker"),
            Peer::ControlClient { pid, uid } => write!(f, "control client pid {pid} (uid {uid})"),
        }
    }
}

/// A frame from a peer that could not be read: malformed, over the size limit, or of another
/// version. Making one is the policy: it is logged with the peer here, and whoever gets one
/// closes that peer's connection.
#[must_use = "a bad frame closes its peer's connection"]
#[derive(Debug)]
pub struct BadFrame {
    peer: Peer,
    error: String,
}

impl BadFrame {
    pub fn new(peer: &Peer, error: impl fmt::Display) -> BadFrame {
        let bad = BadFrame { peer: peer.clone(), error: error.to_string() };
        if peer.internal() {
            log::error!("{bad}; closing the connection");
        } else {
            log::warn!("{bad}; closing the connection");
        }
        bad
    }

    /// What was wrong with the frame.
    pub fn reason(&self) -> &str {
        &self.error
    }
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sent a bad frame: {}", self.peer, self.error)
    }
}

impl std::error::Error for BadFrame {}
