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
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The old worker's side of a hand-off.
pub(super) struct Outgoing {
    pub conn: BusConn,
    pub sent: usize,
    pub done_reported: bool,
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
            return self.start_drain(self.config.reload.drain_timeout);
        };
        let mut conn = match to_mio_unix(fd) {
            Ok(stream) => BusConn::new(stream, Peer::Successor),
            Err(e) => {
                error!("hand-off channel: {e}; draining instead");
                return self.start_drain(self.config.reload.drain_timeout);
            }
        };
        if let Err(e) =
            self.poll.registry().register(conn.stream(), HANDOFF_OUT, Interest::WRITABLE)
        {
            error!("hand-off channel: {e}; draining instead");
            return self.start_drain(self.config.reload.drain_timeout);
        }
        self.stop_accepting();
        self.outgoing = Some(Outgoing { conn, sent: 0, done_reported: false });
        info!("handing sessions over to the next generation");
        self.hand_off_ready();
    }

    /// Sends every session that is in the room; reports to the hub once none is left joining.
    pub(super) fn hand_off_ready(&mut self) {
        if self.outgoing.is_none() {
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
        }
        let joining = self.clients.iter().any(|(_, c)| c.phase == Phase::Joining);
        if let Some(out) = self.outgoing.as_mut() {
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
        self.moved.insert(session);
        if let Some(out) = self.outgoing.as_mut() {
            out.conn.send_with_fds(&Transfer::Session(state), vec![fd]);
            out.sent += 1;
        }
    }

    /// Hub lines for a session that already moved go after it.
    pub(super) fn forward(&mut self, session: SessionId, transfer: Transfer) -> bool {
        if !self.moved.contains(&session) {
            return false;
        }
        if let Some(out) = self.outgoing.as_mut() {
            out.conn.send(&transfer);
        }
        true
    }

    pub(super) fn flush_outgoing(&mut self) {
        if let Some(out) = self.outgoing.as_mut() {
            if let Err(e) = out.conn.flush() {
                // The successor is gone; the supervisor writes off what was in transit.
                error!("hand-off channel write failed: {e}; giving up the hand-off");
                if let Some(mut out) = self.outgoing.take() {
                    let _ = self.poll.registry().deregister(out.conn.stream());
                }
            }
        }
    }

    pub(super) fn outgoing_flushed(&self) -> bool {
        self.outgoing.as_ref().is_none_or(|o| o.conn.pending_out() == 0)
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
        let index = self.incoming.vacant_key();
        let token = Token(INCOMING_BASE + index);
        if let Err(e) = self.poll.registry().register(conn.stream(), token, Interest::READABLE) {
            return error!("hand-off channel: {e}");
        }
        self.incoming.insert(conn);
        self.read_incoming(index);
    }

    pub(super) fn read_incoming(&mut self, index: usize) {
        let Some(conn) = self.incoming.get_mut(index) else { return };
        let fill = conn.fill();
        loop {
            let Some(conn) = self.incoming.get_mut(index) else { return };
            match conn.next_message::<Transfer>() {
                Ok(Some(Transfer::Session(state))) => match conn.take_fd() {
                    Some(fd) => self.adopt(state, fd),
                    None => error!("session {} arrived without its socket", state.session),
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
                    if let Some(mut conn) = self.incoming.try_remove(index) {
                        let _ = self.poll.registry().deregister(conn.stream());
                    }
                    return;
                }
            }
        }
        match fill {
            Ok(Fill::More) => self.incoming_more = true,
            Ok(Fill::Drained) => {}
            Ok(Fill::Closed) | Err(_) => {
                if let Some(mut conn) = self.incoming.try_remove(index) {
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
        let conn = self.next_conn;
        self.next_conn = conn.next();
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
        client.room_from = Some(self.room.len());
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
        self.drain_deadline = Some(Instant::now() + timeout);
    }

    /// The drain timeout passed: ask everyone to reconnect, and go.
    pub(super) fn end_drain(&mut self) {
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.disconnect(key, "* server restarting, please reconnect", LeaveReason::Restart);
        }
        self.exiting = Some((ExitCode::SUCCESS, Instant::now() + CLOSE_GRACE));
    }
}
