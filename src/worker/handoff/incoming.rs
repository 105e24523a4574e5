//! The new worker's side of a hand-off: sessions arrive on a channel from a predecessor, are
//! installed, and rejoin the room once the hub has replayed what they missed in transit.
//!
//! Like the sending side, the receiving side works in slices: a turn adopts at most
//! [`SLICE_SESSIONS`] sessions, or as many as fit in [`SLICE`], and reads more from the
//! channel only once what it already read is processed.

use super::super::client::{Client, Phase};
use super::super::kept::queue_replayed;
use super::super::transport::Transport;
use super::super::{INCOMING_BASE, Worker, rate::TokenBucket};
use super::{Handoff, to_mio_unix};
use crate::bad_frame::Peer;
use crate::bus::conn::Fill;
use crate::bus::handoff::{SessionState, Transfer};
use crate::bus::message::{LeaveReason, SessionId};
use crate::bus::{BusConn, RoomRequest, ToHub};
use crate::protocol::decoder::LineDecoder;
use log::{error, warn};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// How long one turn of the event loop may spend adopting sessions from one channel.
const SLICE: Duration = Duration::from_millis(1);
/// Sessions adopted per channel and turn at most.
const SLICE_SESSIONS: usize = 256;

/// A channel sessions come in on.
pub(super) struct Incoming {
    conn: BusConn,
    /// The last turn stopped before everything read was processed: process that before
    /// reading more.
    behind: bool,
    /// Output that came ahead of its session, by session.
    ahead: HashMap<SessionId, Vec<u8>>,
}

impl Handoff {
    /// The incoming channels, by index.
    fn open_incoming(&self) -> Vec<usize> {
        self.incoming.iter().map(|(i, _)| i).collect()
    }
}

impl Worker {
    /// `Receive` from the supervisor: sessions will arrive on this channel.
    pub(in crate::worker) fn start_receiving(&mut self, channel: Option<OwnedFd>) {
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
        self.handoff.incoming.insert(Incoming { conn, behind: false, ahead: HashMap::new() });
        self.read_incoming(index);
    }

    /// Reads on from the incoming channels whose last turn left something to do.
    pub(in crate::worker) fn read_incoming_more(&mut self) {
        if std::mem::take(&mut self.handoff.incoming_more) {
            for index in self.handoff.open_incoming() {
                self.read_incoming(index);
            }
        }
    }

    /// Reads from one incoming channel (unless what was read before is still being processed)
    /// and processes one slice of it.
    pub(in crate::worker) fn read_incoming(&mut self, index: usize) {
        let Some(channel) = self.handoff.incoming.get_mut(index) else { return };
        let fill = if channel.behind { Ok(Fill::More) } else { channel.conn.fill() };
        let started = Instant::now();
        let mut sessions = 0;
        let behind = loop {
            if sessions == SLICE_SESSIONS || (sessions > 0 && started.elapsed() >= SLICE) {
                break true;
            }
            let Some(channel) = self.handoff.incoming.get_mut(index) else { return };
            match channel.conn.next_message::<Transfer>() {
                Ok(Some(Transfer::Session(mut state))) => {
                    if let Some(mut output) = channel.ahead.remove(&state.session) {
                        output.append(&mut state.output);
                        state.output = output;
                    }
                    match channel.conn.take_fd() {
                        Some(fd) => self.adopt(state, fd),
                        None => {
                            // Out of descriptors: the kernel closed the socket on the way. The
                            // hub must not wait for it to be adopted.
                            error!(
                                "session {} arrived without its socket; it is lost",
                                state.session
                            );
                            let session = state.session;
                            let leave = RoomRequest::Leave { session, reason: LeaveReason::Lost };
                            self.bus.send(&ToHub::Room(leave));
                        }
                    }
                    sessions += 1;
                }
                Ok(Some(Transfer::Output { session, bytes })) => {
                    channel.ahead.entry(session).or_default().extend_from_slice(&bytes);
                }
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
                Ok(None) => break false,
                Err(_) => return self.close_incoming(index),
            }
        };
        if let Some(channel) = self.handoff.incoming.get_mut(index) {
            channel.behind = behind;
        }
        match fill {
            Ok(Fill::More) => self.handoff.incoming_more = true,
            Ok(Fill::Drained) if behind => self.handoff.incoming_more = true,
            Ok(Fill::Drained) => {}
            Ok(Fill::Closed) | Err(_) if behind => self.handoff.incoming_more = true,
            Ok(Fill::Closed) | Err(_) => self.close_incoming(index),
        }
    }

    fn close_incoming(&mut self, index: usize) {
        if let Some(mut channel) = self.handoff.incoming.try_remove(index) {
            let _ = self.poll.registry().deregister(channel.conn.stream());
        }
    }

    /// Installs a session received from the previous worker; it rejoins the room when the
    /// hub's `Resume` arrives.
    fn adopt(&mut self, mut state: SessionState, fd: OwnedFd) {
        let std_stream = std::net::TcpStream::from(fd);
        if let Err(e) = std_stream.set_nonblocking(true) {
            warn!("adopted session {}: {e}", state.session);
        }
        let stream = mio::net::TcpStream::from_std(std_stream);
        let now = Instant::now();
        let conn = self.accept.conn_id();
        let chat = &self.config.chat;
        let bucket = match (&chat.rate_limit, state.tokens) {
            (Some(limit), Some(tokens)) => Some(TokenBucket::with_tokens(limit, tokens, now)),
            (Some(limit), None) => Some(TokenBucket::new(limit, now)),
            (None, _) => None,
        };
        let max_line_bytes = chat.max_line_bytes;
        let session = state.session;
        let transport = match Transport::restore(state.transport.take()) {
            Ok(transport) => transport,
            Err(e) => {
                // The socket is dropped: without its TLS state nobody can talk to it.
                warn!("adopted session {session}: {e}; it is lost");
                let leave = RoomRequest::Leave { session, reason: LeaveReason::Lost };
                return self.bus.send(&ToHub::Room(leave));
            }
        };
        let added = self.add_client(stream, |stream| {
            let mut client = Client::new(stream, transport, conn, max_line_bytes);
            client.session = Some(session);
            client.phase = Phase::Resuming { leaving: state.leaving };
            client.decoder = LineDecoder::restore(state.input, max_line_bytes);
            client.restore_output(state.output, state.mid_line);
            client.bucket = bucket;
            client.last_line = now.checked_sub(Duration::from_millis(state.idle_ms)).unwrap_or(now);
            client.eof = state.eof;
            client
        });
        let key = match added {
            Ok(key) => key,
            Err(e) => {
                warn!("adopted session {session}: {e}");
                let leave = RoomRequest::Leave { session, reason: LeaveReason::Lost };
                return self.bus.send(&ToHub::Room(leave));
            }
        };
        self.sessions.insert(session, key);
        self.keep(key, state.last_seq);
        let adopt = RoomRequest::Adopt { session, last_seq: state.last_seq };
        self.bus.send(&ToHub::Room(adopt));
        self.mark_dirty(key);
    }

    /// The hub replayed what the moved session missed: it is back in the room (and goes on
    /// to the next generation if a hand-off started meanwhile).
    pub(in crate::worker) fn resume(&mut self, session: SessionId, lines: Vec<String>) {
        let Some(&key) = self.sessions.get(&session) else { return };
        let client = &mut self.clients[key];
        let Phase::Resuming { leaving } = client.phase else { return };
        for line in &lines {
            queue_replayed(client, line);
        }
        if let Some(tracked) = client.tracked.as_mut() {
            tracked.replayed_up_to(self.last_seq);
        }
        client.phase = if leaving { Phase::Leaving } else { Phase::Live };
        client.room_from = Some(self.output.room_len());
        self.mark_dirty(key);
        self.queue_for_handoff(key);
        self.service(key);
    }

    /// The first part of a long replay: queued like the rest, the session still resuming.
    pub(in crate::worker) fn replay(&mut self, session: SessionId, lines: Vec<String>) {
        let Some(&key) = self.sessions.get(&session) else { return };
        let client = &mut self.clients[key];
        if !matches!(client.phase, Phase::Resuming { .. }) {
            return;
        }
        for line in &lines {
            queue_replayed(client, line);
        }
        self.mark_dirty(key);
    }
}
