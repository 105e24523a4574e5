//! The old worker's side of a hand-off: every session in the room goes to a successor, a slice
//! per turn of the event loop, and hub lines for sessions already sent follow them.
//!
//! The supervisor may attach several channels to `HandOff`, one per successor (when a reload
//! adds workers, so that the sessions spread over all of them): sessions are then dealt out
//! over the channels in turn, so each successor gets an even share, and what the hub still
//! sends for a moved session goes over the channel that session went through.
//!
//! A slice ends after [`SLICE`], [`SLICE_SESSIONS`] sessions, or once the next channel has
//! [`CHANNEL_HIGH_WATER`] bytes waiting to be written; the next turn goes on from there. The
//! high-water mark also paces the hand-off to the successors' reading, so the old worker never
//! holds the whole lot twice (in its clients' queues and encoded for a channel).

use super::super::client::{Client, Phase};
use super::super::transport::Transport;
use super::super::{HANDOFF_OUT, Worker};
use super::{Handoff, to_mio_unix};
use crate::bad_frame::Peer;
use crate::bus::handoff::{SessionState, Transfer};
use crate::bus::message::{LeaveReason, SessionId};
use crate::bus::{BusConn, RoomRequest, ToHub, WorkerReport};
use log::{error, info};
use mio::Interest;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long one turn of the event loop may spend handing sessions over.
const SLICE: Duration = Duration::from_millis(1);
/// Sessions handed over per turn at most.
const SLICE_SESSIONS: usize = 256;
/// No session is encoded for a channel while this much waits to be written to it.
const CHANNEL_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Unsent output travels in pieces of at most this much, so that no frame nears the bus limit
/// whatever `max_backlog_bytes` allows.
const OUTPUT_PIECE: usize = 1024 * 1024;

/// The old worker's side of a hand-off.
pub(super) struct Outgoing {
    /// One per successor; `None` once writing to it failed (that successor is gone).
    channels: Vec<Option<BusConn>>,
    /// The channel the next session goes to.
    next: usize,
    /// Clients to hand over, by key: those in the room when the hand-off began, then each one
    /// admitted since. Checked again when their turn comes.
    queue: VecDeque<usize>,
    sent: usize,
    done_reported: bool,
}

impl Outgoing {
    /// The next open channel in turn, from `self.next` on.
    fn next_channel(&self) -> Option<usize> {
        let n = self.channels.len();
        (0..n).map(|i| (self.next + i) % n).find(|&i| self.channels[i].is_some())
    }

    pub fn open_channels(&self) -> usize {
        self.channels.iter().flatten().count()
    }
}

impl Handoff {
    /// Sessions wait to be handed over and the next channel can take more: the event loop must
    /// come back without waiting.
    pub fn outgoing_due(&self) -> bool {
        self.outgoing.as_ref().is_some_and(|o| {
            !o.queue.is_empty()
                && o.next_channel()
                    .and_then(|i| o.channels[i].as_ref())
                    .is_some_and(|c| c.pending_out() < CHANNEL_HIGH_WATER)
        })
    }
}

impl Worker {
    /// `HandOff` from the supervisor: stop accepting, and from this turn of the event loop on
    /// send every session to the successors, one per channel (`None` for a descriptor that
    /// could not be received).
    pub(in crate::worker) fn start_handoff(&mut self, fds: Vec<Option<OwnedFd>>) {
        let mut channels = Vec::new();
        for fd in fds.into_iter().flatten() {
            let mut conn = match to_mio_unix(fd) {
                Ok(stream) => BusConn::new(stream, Peer::Successor),
                Err(e) => {
                    error!("hand-off channel: {e}");
                    continue;
                }
            };
            match self.poll.registry().register(conn.stream(), HANDOFF_OUT, Interest::WRITABLE) {
                Ok(()) => channels.push(Some(conn)),
                Err(e) => error!("hand-off channel: {e}"),
            }
        }
        if channels.is_empty() {
            // A channel that did not arrive only means one successor fewer gets sessions;
            // with none, they stay here.
            error!("hand-off requested without a usable channel; draining instead");
            return self.drain_instead();
        }
        self.stop_accepting();
        let queue = self.clients.iter().filter(|(_, c)| ready(c)).map(|(k, _)| k).collect();
        let n = channels.len();
        self.handoff.outgoing =
            Some(Outgoing { channels, next: 0, queue, sent: 0, done_reported: false });
        if n == 1 {
            info!("handing sessions over to the next generation");
        } else {
            info!("handing sessions over to the next generation, dealt over {n} workers");
        }
    }

    /// A client entered the room (admitted while the hand-off was under way, or back from its
    /// own move): it goes too.
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
            let Some(channel) = out.next_channel() else { return };
            if out.channels[channel].as_ref().is_none_or(|c| c.pending_out() >= CHANNEL_HIGH_WATER)
            {
                break;
            }
            let Some(key) = out.queue.pop_front() else { break };
            if self.clients.get(key).is_some_and(|c| ready(c)) {
                self.hand_off(key, channel);
                sessions += 1;
            }
        }
        // Connections still opening (a TLS handshake) finish here first, then go like joiners.
        let joining = !self.accept.joining.is_empty() || self.openings.in_progress() > 0;
        if let Some(out) = self.handoff.outgoing.as_mut() {
            if out.queue.is_empty() && !joining && !out.done_reported {
                out.done_reported = true;
                info!("handed over {} sessions", out.sent);
                self.bus.send(&ToHub::Control(WorkerReport::HandoffDone { sessions: out.sent }));
            }
        }
    }

    /// Sends one session over `channel`.
    fn hand_off(&mut self, key: usize, channel: usize) {
        let now = Instant::now();
        // Room lines not yet written go with the session as unsent output.
        self.detach(key);
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.stream);
        let Some(session) = client.session else { return };
        self.sessions.remove(&session);
        let transport =
            match std::mem::replace(&mut client.transport, Transport::Plain).into_state() {
                Ok(transport) => transport,
                Err(why) => {
                    // Never expected: only open sessions are in the room.
                    error!("session {session} cannot be handed over ({why}); it is lost");
                    let leave = RoomRequest::Leave { session, reason: LeaveReason::Lost };
                    return self.bus.send(&ToHub::Room(leave));
                }
            };
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
            transport,
        };
        let fd = OwnedFd::from(client.stream);
        self.handoff.moved.insert(session, channel);
        let Some(out) = self.handoff.outgoing.as_mut() else { return };
        out.next = (channel + 1) % out.channels.len();
        out.sent += 1;
        if let Some(conn) = out.channels[channel].as_mut() {
            for piece in ahead.chunks(OUTPUT_PIECE) {
                conn.send(&Transfer::Output { session, bytes: piece.to_vec() });
            }
            conn.send_with_fds(&Transfer::Session(state), vec![fd]);
        }
    }

    /// Hub lines for a session that already moved go after it, over the same channel.
    pub(in crate::worker) fn forward(&mut self, session: SessionId, transfer: Transfer) -> bool {
        let Some(&channel) = self.handoff.moved.get(&session) else { return false };
        let out = self.handoff.outgoing.as_mut();
        if let Some(conn) = out.and_then(|o| o.channels.get_mut(channel)).and_then(Option::as_mut) {
            conn.send(&transfer);
        }
        true
    }

    /// Writes what waits on the channels. A channel that fails is given up (its successor is
    /// gone; the supervisor writes off what was in transit); when none is left, the hand-off
    /// is.
    pub(in crate::worker) fn flush_outgoing(&mut self) {
        let Some(out) = self.handoff.outgoing.as_mut() else { return };
        for slot in &mut out.channels {
            let Some(conn) = slot.as_mut() else { continue };
            if let Err(e) = conn.flush() {
                error!("hand-off channel write failed: {e}; giving that successor up");
                if let Some(mut conn) = slot.take() {
                    let _ = self.poll.registry().deregister(conn.stream());
                }
            }
        }
        if out.open_channels() == 0 {
            error!("no successor left to hand sessions to; giving up the hand-off");
            self.handoff.outgoing = None;
        }
    }

    pub(in crate::worker) fn outgoing_flushed(&self) -> bool {
        self.handoff
            .outgoing
            .as_ref()
            .is_none_or(|o| o.channels.iter().flatten().all(|c| c.pending_out() == 0))
    }
}

/// In the room (or leaving it, the hub's confirmation still to come): a session to hand over.
fn ready(client: &Client) -> bool {
    client.session.is_some() && matches!(client.phase, Phase::Live | Phase::Leaving)
}
