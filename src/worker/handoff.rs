//! Reload, seen from a worker: handing sessions to a successor, receiving them, or draining.
//!
//! The old worker stops accepting (the slot's listener stays open in the supervisor and the new
//! worker accepts from the same queue), then sends each live session — socket and state — over
//! the hand-off channel. The new worker registers the socket, flushes what was unsent, tells the
//! hub it adopted the session and, with the hub's replay of the events the session missed in
//! transit, puts it back in the room. Lines the hub still sends to the old worker for a moved
//! session are forwarded over the same channel until the supervisor says `Exit`.

use super::client::{Client, Phase};
use super::{CLOSE_GRACE, HANDOFF_OUT, INCOMING_BASE, Worker, rate::TokenBucket};
use crate::bad_frame::Peer;
use crate::bus::conn::Fill;
use crate::bus::handoff::{SessionState, Transfer};
use crate::bus::message::{LeaveReason, SessionId};
use crate::bus::{BusConn, RoomRequest, ToHub, WorkerReport};
use log::{error, info, warn};
use mio::{Interest, Token};
use slab::Slab;
use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The worker's part in reloads: sessions going out to a successor, coming in from
/// predecessors, or a drain.
#[derive(Default)]
pub(super) struct Handoff {
    /// The channel sessions go out on.
    outgoing: Option<Outgoing>,
    /// Sessions already sent: what the hub still sends for them is forwarded.
    pub moved: HashSet<SessionId>,
    /// Channels sessions come in on.
    incoming: Slab<BusConn>,
    /// An incoming channel's last read stopped at its budget.
    pub incoming_more: bool,
    /// Reload without hand-off: when to give up on the remaining clients.
    pub drain_deadline: Option<Instant>,
}

impl Handoff {
    pub fn is_handing_off(&self) -> bool {
        self.outgoing.is_some()
    }

    /// Hand-off channels open, one descriptor each.
    pub fn channels(&self) -> usize {
        self.incoming.len() + usize::from(self.outgoing.is_some())
    }
}

/// The old worker's side of a hand-off.
struct Outgoing {
    conn: BusConn,
    sent: usize,
    done_reported: bool,
}

fn to_mio_unix(fd: OwnedFd) -> std::io::Result<mio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(mio::net::UnixStream::from_std(stream))
}

impl Worker {
    /// `HandOff` from the supervisor: stop accepting, send every session to the successor.
    pub(super) fn start_handoff(&mut self, channel: Option<OwnedFd>) {
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
        self.handoff.outgoing = Some(Outgoing { conn, sent: 0, done_reported: false });
        info!("handing sessions over to the next generation");
        self.hand_off_ready();
    }

    /// The hand-off cannot start: the clients are served here until they leave or the drain
    /// timeout passes, and the supervisor is told, so the reload goes on without waiting.
    fn drain_instead(&mut self) {
        self.bus.send(&ToHub::Control(WorkerReport::Draining));
        self.start_drain(self.config.reload.drain_timeout);
    }

    /// Sends every session that is in the room; reports to the hub once none is left joining.
    pub(super) fn hand_off_ready(&mut self) {
        if self.handoff.outgoing.is_none() {
            return;
        }
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.is_some() && matches!(c.phase, Phase::Live | Phase::Leaving))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.hand_off(key);
            // Thousands of sessions with unsent output take a while to encode: the worker is
            // busy, not hung.
            self.heartbeat_if_due(Instant::now());
        }
        let joining = self.clients.iter().any(|(_, c)| c.phase == Phase::Joining);
        if let Some(out) = self.handoff.outgoing.as_mut() {
            if !joining && !out.done_reported {
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
        let state = SessionState {
            session,
            decoder: client.decoder.clone(),
            output,
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
            out.conn.send_with_fds(&Transfer::Session(state), vec![fd]);
            out.sent += 1;
        }
    }

    /// Hub lines for a session that already moved go after it.
    pub(super) fn forward(&mut self, session: SessionId, transfer: Transfer) -> bool {
        if !self.handoff.moved.contains(&session) {
            return false;
        }
        if let Some(out) = self.handoff.outgoing.as_mut() {
            out.conn.send(&transfer);
        }
        true
    }

    pub(super) fn flush_outgoing(&mut self) {
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

    pub(super) fn outgoing_flushed(&self) -> bool {
        self.handoff.outgoing.as_ref().is_none_or(|o| o.conn.pending_out() == 0)
    }

    /// `Receive` from the supervisor: sessions will arrive on this channel.
    pub(super) fn start_receiving(&mut self, channel: Option<OwnedFd>) {
        let Some(fd) = channel else {
            return error!("receive requested without a channel");
        };
        let mut conn = match to_mio_unix(fd) {
            Ok(stream) => BusConn::new(stream, Peer::Predecessor),
            Err(e) => return error!("hand-off channel: {e}"),
        };
        let index = self.handoff.incoming.vacant_key();
        let token = Token(INCOMING_BASE + index);
        if let Err(e) = self.poll.registry().register(conn.stream(), token, Interest::READABLE) {
            return error!("hand-off channel: {e}");
        }
        self.handoff.incoming.insert(conn);
        self.read_incoming(index);
    }

    /// Reads on from the incoming channels whose last read stopped at its budget.
    pub(super) fn read_incoming_more(&mut self) {
        if std::mem::take(&mut self.handoff.incoming_more) {
            let open: Vec<usize> = self.handoff.incoming.iter().map(|(i, _)| i).collect();
            for index in open {
                self.read_incoming(index);
            }
        }
    }

    pub(super) fn read_incoming(&mut self, index: usize) {
        let Some(conn) = self.handoff.incoming.get_mut(index) else { return };
        let fill = conn.fill();
        loop {
            let Some(conn) = self.handoff.incoming.get_mut(index) else { return };
            match conn.next_message::<Transfer>() {
                Ok(Some(Transfer::Session(state))) => match conn.take_fd() {
                    Some(fd) => self.adopt(state, fd),
                    None => {
                        // Out of descriptors: the kernel closed the socket on the way. The hub
                        // must not wait for it to be adopted.
                        error!("session {} arrived without its socket; it is lost", state.session);
                        let session = state.session;
                        let leave = RoomRequest::Leave { session, reason: LeaveReason::Lost };
                        self.bus.send(&ToHub::Room(leave));
                    }
                },
                Ok(Some(Transfer::Direct { session, lines })) => {
                    if let Some(&key) = self.sessions.get(&session) {
                        self.send_lines(key, &lines);
                    }
                }
                Ok(Some(Transfer::Left { session })) => {
                    if let Some(&key) = self.sessions.get(&session) {
                        self.close(key);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    if let Some(mut conn) = self.handoff.incoming.try_remove(index) {
                        let _ = self.poll.registry().deregister(conn.stream());
                    }
                    return;
                }
            }
        }
        match fill {
            Ok(Fill::More) => self.handoff.incoming_more = true,
            Ok(Fill::Drained) => {}
            Ok(Fill::Closed) | Err(_) => {
                if let Some(mut conn) = self.handoff.incoming.try_remove(index) {
                    let _ = self.poll.registry().deregister(conn.stream());
                }
            }
        }
    }

    /// Installs a session received from the previous worker; it rejoins the room when the
    /// hub's `Resume` arrives.
    fn adopt(&mut self, state: SessionState, fd: OwnedFd) {
        let std_stream = std::net::TcpStream::from(fd);
        if let Err(e) = std_stream.set_nonblocking(true) {
            warn!("adopted session {}: {e}", state.session);
        }
        let mut stream = mio::net::TcpStream::from_std(std_stream);
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let token = Token(super::CLIENT_BASE + key);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("adopted session {}: {e}", state.session);
            let leave = RoomRequest::Leave { session: state.session, reason: LeaveReason::Lost };
            self.bus.send(&ToHub::Room(leave));
            return;
        }
        let now = Instant::now();
        let conn = self.accept.conn_id();
        let mut client = Client::new(stream, conn, self.config.chat.max_line_bytes);
        client.session = Some(state.session);
        client.phase = Phase::Resuming { leaving: state.leaving };
        client.decoder = state.decoder;
        client.decoder.set_max_line_bytes(self.config.chat.max_line_bytes);
        client.restore_output(&state.output, state.mid_line);
        client.bucket = match (&self.config.chat.rate_limit, state.tokens) {
            (Some(limit), Some(tokens)) => Some(TokenBucket::with_tokens(limit, tokens, now)),
            (Some(limit), None) => Some(TokenBucket::new(limit, now)),
            (None, _) => None,
        };
        client.last_line = now.checked_sub(Duration::from_millis(state.idle_ms)).unwrap_or(now);
        client.eof = state.eof;
        entry.insert(Box::new(client));
        self.sessions.insert(state.session, key);
        let adopt = RoomRequest::Adopt { session: state.session, last_seq: state.last_seq };
        self.bus.send(&ToHub::Room(adopt));
        self.mark_dirty(key);
    }

    /// The hub replayed what the moved session missed: it is back in the room.
    pub(super) fn resume(&mut self, session: SessionId, lines: Vec<String>) {
        let Some(&key) = self.sessions.get(&session) else { return };
        let client = &mut self.clients[key];
        let Phase::Resuming { leaving } = client.phase else { return };
        for line in &lines {
            client.queue_line(line);
        }
        client.phase = if leaving { Phase::Leaving } else { Phase::Live };
        client.room_from = Some(self.output.room_len());
        self.mark_dirty(key);
        self.service(key);
    }

    /// The first part of a long replay: queued like the rest, the session still resuming.
    pub(super) fn replay(&mut self, session: SessionId, lines: Vec<String>) {
        let Some(&key) = self.sessions.get(&session) else { return };
        let client = &mut self.clients[key];
        if !matches!(client.phase, Phase::Resuming { .. }) {
            return;
        }
        for line in &lines {
            client.queue_line(line);
        }
        self.mark_dirty(key);
    }

    /// Reload without hand-off: stop accepting, serve the clients we have until they leave or
    /// the drain timeout passes.
    pub(super) fn start_drain(&mut self, timeout: Duration) {
        info!(
            "draining: serving current clients for at most {}",
            crate::config::duration::display(timeout)
        );
        self.stop_accepting();
        self.handoff.drain_deadline = Some(Instant::now() + timeout);
    }

    /// The drain timeout passed: ask everyone to reconnect, and go.
    fn end_drain(&mut self) {
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.disconnect(key, "* server restarting, please reconnect", LeaveReason::Restart);
        }
        self.life.exit_by(ExitCode::SUCCESS, Instant::now() + CLOSE_GRACE);
    }

    /// The drain timeout passed with clients still here.
    pub(super) fn end_drain_if_due(&mut self, now: Instant) {
        if self.handoff.drain_deadline.is_some_and(|at| at <= now) && !self.life.is_exiting() {
            self.end_drain();
        }
    }

    /// Draining, and every client has left: the worker can go.
    pub(super) fn drained(&self) -> bool {
        self.handoff.drain_deadline.is_some() && self.clients.is_empty() && !self.life.is_exiting()
    }
}
