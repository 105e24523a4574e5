//! The opening phase of layered connections, from the worker's side: a connection accepted on
//! a TLS or web listener is in the client table at once (same tokens, same descriptor
//! accounting) but joins the room only when its handshake is done and, on a web listener, its
//! HTTP request upgraded to a WebSocket. A failed handshake, or an opening not done within
//! `tls.handshake_timeout`, closes the connection before anything reaches the room; it is
//! logged at debug level and, when TLS is involved, counted as
//! `chatd_rejected_total{reason="tls"}`. A request answered without an upgrade (the page, a
//! 404) is written out, then the connection closes.
//!
//! The hub counts `max_clients_per_ip` at `Join`, which an opening connection has not sent yet;
//! so each worker also holds the connections still opening from one address to that limit.

use super::Input;
use crate::bus::message::ConnId;
use crate::bus::{RoomRequest, ToHub};
use crate::listener::Kind;
use crate::tls::TlsAcceptor;
use crate::worker::Worker;
use crate::worker::client::Phase;
use log::debug;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What the worker needs for opening phases: the certificate, and who is opening.
pub struct Openings {
    /// The certificate and key, loaded at start from the worker's config; `None` without TLS
    /// listeners.
    pub tls: Option<TlsAcceptor>,
    timeout: Duration,
    /// Connections still opening, by address.
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

impl Openings {
    pub fn new(tls: Option<TlsAcceptor>, timeout: Duration) -> Openings {
        Openings { tls, timeout, by_ip: HashMap::new(), total: 0 }
    }

    /// Connections still in their opening phase.
    pub fn in_progress(&self) -> usize {
        self.total
    }

    /// Whether one more connection from `ip` may open, with `limit` per address (0 = none).
    pub fn admits(&self, ip: IpAddr, limit: usize) -> bool {
        limit == 0 || self.by_ip.get(&ip).copied().unwrap_or(0) < limit
    }

    pub fn started(&mut self, ip: IpAddr) {
        *self.by_ip.entry(ip).or_default() += 1;
        self.total += 1;
    }

    pub fn ended(&mut self, ip: IpAddr) {
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
            self.total -= 1;
        }
    }
}

impl Worker {
    /// Drives a connection's opening phase with what it sent; once it is open the client asks
    /// the hub to join, like a freshly accepted plain one.
    pub(in crate::worker) fn advance_opening(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            if client.phase != Phase::Opening || !client.can_read {
                break;
            }
            match client.read_input(&mut self.input.scratch) {
                Ok(Input::Data(n)) => self.counters.bytes_received += n as u64,
                Ok(Input::Empty) => break,
                Ok(Input::Opened) => {
                    let conn = client.conn;
                    self.opened(key, conn);
                    break;
                }
                Ok(Input::Refused(reason)) => {
                    self.refuse_opening(key, &reason);
                    break;
                }
                Ok(Input::Answered(what)) => {
                    self.answered(key, &what);
                    break;
                }
                Ok(Input::Eof) | Err(_) => {
                    self.refuse_opening(key, "connection lost during the opening");
                    return;
                }
            }
        }
        // The handshake's own messages (or its alert) go out now, not with the next pass.
        self.flush_backlog(key);
    }

    fn opened(&mut self, key: usize, conn: ConnId) {
        let Some(addr) = self.end_opening(key) else { return };
        self.accept.joining.insert(conn, key);
        self.bus.send(&ToHub::Room(RoomRequest::Join { conn, addr }));
    }

    /// A failed opening: counted, logged at debug, closed after the alert it calls for.
    fn refuse_opening(&mut self, key: usize, reason: &str) {
        let kind = self.clients.get(key).map(|c| c.transport.kind());
        let addr = self.end_opening(key);
        if kind != Some(Kind::Web) {
            self.counters.tls_rejected += 1;
        }
        if let (Some(addr), Some(kind)) = (addr, kind) {
            debug!("{kind} connection from {addr} refused: {reason}");
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.left = true;
        }
        self.close(key);
    }

    /// An HTTP request answered without an upgrade: the answer goes out, then the connection
    /// closes.
    fn answered(&mut self, key: usize, what: &str) {
        if let Some(addr) = self.end_opening(key) {
            debug!("web request from {addr}: {what}");
        }
        if let Some(client) = self.clients.get_mut(key) {
            client.left = true;
        }
        self.close(key);
    }

    /// The connection leaves its opening phase (open, refused, closed or removed): it no longer
    /// counts as opening. Where it came from, if it was opening.
    pub(in crate::worker) fn end_opening(&mut self, key: usize) -> Option<std::net::SocketAddr> {
        let client = self.clients.get_mut(key)?;
        if client.phase != Phase::Opening {
            return None;
        }
        client.phase = Phase::Joining;
        let peer = client.transport.take_opening_peer()?;
        self.openings.ended(peer.ip());
        Some(peer)
    }

    /// Closes connections whose opening phase outlasted `tls.handshake_timeout`.
    pub(in crate::worker) fn expire_openings(&mut self, now: Instant) {
        if self.openings.total == 0 {
            return;
        }
        let timeout = self.openings.timeout;
        let stalled: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase == Phase::Opening && now - c.last_line >= timeout)
            .map(|(key, _)| key)
            .collect();
        for key in stalled {
            self.refuse_opening(key, "opening (TLS handshake, HTTP request) timed out");
        }
    }
}
