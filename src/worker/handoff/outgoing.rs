//! The old worker's side of a hand-off: every session in the room goes to the successor, a
//! slice per turn of the event loop, and hub lines for sessions already sent follow them.
//!
//! A slice ends after [`SLICE`], [`SLICE_SESSIONS`] sessions, or once [`CHANNEL_HIGH_WATER`]
//! bytes wait to be written to the channel; the next turn goes on from there. The high-water
//! mark also paces the hand-off to the successor's reading, so the old worker never holds the
//! whole lot twice (in its clients' queues and encoded for the channel).

use super::super::client::Phase;
use super::super::{HANDOFF_OUT, Worker};
use super::{Handoff, to_mio_unix};
use crate::bad_frame::Peer;
use crate::bus::handoff::{SessionState, Transfer};
use crate::bus::message::SessionId;
use crate::bus::{BusConn, ToHub, WorkerReport};
use log::{error, info};
use mio::Interest;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long one turn of the event loop may spend handing sessions over.
const SLICE: Duration = Duration::from_millis(1);
/// Sessions handed over per turn at most.
const SLICE_SESSIONS: usize = 256;
/// No session is encoded while this much waits to be written to the channel.
const CHANNEL_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Unsent output travels in pieces of at most this much, so that no frame nears the bus limit
/// whatever `max_backlog_bytes` allows.
const OUTPUT_PIECE: usize = 1024 * 1024;

/// The old worker's side of a hand-off.
pub(super) struct Outgoing {
    conn: BusConn,
    /// Clients to hand over, by key: those in the room when the hand-off began, then each one
    /// admitted since. Checked again when their turn comes.
    queue: VecDeque<usize>,
    sent: usize,
    done_reported: bool,
}

impl Handoff {
    /// Sessions wait to be handed over and the channel can take more: the event loop must come
    /// back without waiting.
    pub fn outgoing_due(&self) -> bool {
        self.outgoing
            .as_ref()
            .is_some_and(|o| !o.queue.is_empty() && o.conn.pending_out() < CHANNEL_HIGH_WATER)
    }
}

impl Worker {
    /// `HandOff` from the supervisor: stop accepting, send every session to the successor.
    pub(in crate::worker) fn start_handoff(&mut self, channel: Option<OwnedFd>) {
        let Some(fd) = channel else {
            error!("hand-off requested without a channel; draining instead");
            return self.drain_instead();
        };
        let mut conn = match to_mio_unix(fd) {
            Ok(stream) => BusConn::new(stream, Peer::Successor),
            Err(e) => {
                error!("hand-off channel: {e}; draining instead");
                return self.drain_instead();
            }
        };
        if let Err(e) =
            self.poll.registry().register(conn.stream(), HANDOFF_OUT, Interest::WRITABLE)
        {
            error!("hand-off channel: {e}; draining instead");
            return self.drain_instead();
        }
        self.stop_accepting();
        let queue = self.clients.iter().filter(|(_, c)| ready(c)).map(|(k, _)| k).collect();
        self.handoff.outgoing = Some(Outgoing { conn, queue, sent: 0, done_reported: false });
        info!("handing sessions over to the next generation");
        self.continue_handoff();
    }

    /// A client entered the room (admitted while the hand-off was under way): it goes too.
    pub(in crate::worker) fn queue_for_handoff(&mut self, key: usize) {
        if let Some(out) = self.handoff.outgoing.as_mut() {
            out.queue.push_back(key);
        }
    }

    /// Hands over the next slice of sessions; reports to the hub once none is left, nor any
    /// client still waiting to be admitted.
    pub(in crate::worker) fn continue_handoff(&mut self) {
        let started = Instant::now();
        let mut sessions = 0;
        while sessions < SLICE_SESSIONS && (sessions == 0 || started.elapsed() < SLICE) {
            let Some(out) = self.handoff.outgoing.as_mut() else { return };
            if out.conn.pending_out() >= CHANNEL_HIGH_WATER {
                break;
            }
            let Some(key) = out.queue.pop_front() else { break };
            if self.clients.get(key).is_some_and(|c| ready(c)) {
                self.hand_off(key);
                sessions += 1;
            }
        }
        let joining = !self.accept.joining.is_empty();
        if let Some(out) = self.handoff.outgoing.as_mut() {
            if out.queue.is_empty() && !joining && !out.done_reported {
                out.done_reported = true;
                info!("handed over {} sessions", out.sent);
                self.bus.send(&ToHub::Control(WorkerReport::HandoffDone { sessions: out.sent }));
            }
        }
    }

    fn hand_off(&mut self, key: usize) {
        let now = Instant::now();
        // Room lines not yet written go with the session as unsent output.
        self.detach(key);
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.stream);
        let Some(session) = client.session else { return };
        self.sessions.remove(&session);
        let (output, mid_line) = client.take_output();
        // All but the last piece of the output go ahead of the session; the new worker puts
        // them back together before it adopts the session.
        let pieces = output.len().saturating_sub(1) / OUTPUT_PIECE;
        let (ahead, last) = output.split_at(pieces * OUTPUT_PIECE);
        let state = SessionState {
            session,
            input: client.decoder.export(),
            output: last.to_vec(),
            mid_line,
            last_seq: self.last_seq,
            tokens: client.bucket.as_mut().map(|b| b.tokens(now)),
            idle_ms: now.saturating_duration_since(client.last_line).as_millis() as u64,
            leaving: client.phase == Phase::Leaving,
            eof: client.eof,
        };
        let fd = OwnedFd::from(client.stream);
        self.handoff.moved.insert(session);
        if let Some(out) = self.handoff.outgoing.as_mut() {
            for piece in ahead.chunks(OUTPUT_PIECE) {
                out.conn.send(&Transfer::Output { session, bytes: piece.to_vec() });
            }
            out.conn.send_with_fds(&Transfer::Session(state), vec![fd]);
            out.sent += 1;
        }
    }

    /// Hub lines for a session that already moved go after it.
    pub(in crate::worker) fn forward(&mut self, session: SessionId, transfer: Transfer) -> bool {
        if !self.handoff.moved.contains(&session) {
            return false;
        }
        if let Some(out) = self.handoff.outgoing.as_mut() {
            out.conn.send(&transfer);
        }
        true
    }

    pub(in crate::worker) fn flush_outgoing(&mut self) {
        if let Some(out) = self.handoff.outgoing.as_mut() {
            if let Err(e) = out.conn.flush() {
                // The successor is gone; the supervisor writes off what was in transit.
                error!("hand-off channel write failed: {e}; giving up the hand-off");
                if let Some(mut out) = self.handoff.outgoing.take() {
                    let _ = self.poll.registry().deregister(out.conn.stream());
                }
            }
        }
    }

    pub(in crate::worker) fn outgoing_flushed(&self) -> bool {
        self.handoff.outgoing.as_ref().is_none_or(|o| o.conn.pending_out() == 0)
    }
}

/// In the room (or leaving it, the hub's confirmation still to come): a session to hand over.
fn ready(client: &super::super::client::Client) -> bool {
    client.session.is_some() && matches!(client.phase, Phase::Live | Phase::Leaving)
}
