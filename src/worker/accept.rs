//! Accepting connections on the slot's listeners.
//!
//! Accept errors that concern one connection are skipped; running out of descriptors pauses
//! accepting briefly (logged once) instead of spinning on a listener that stays readable.

use super::client::Client;
use super::{CLIENT_BASE, LISTENER_BASE, Worker};
use crate::bus::ToHub;
use crate::bus::message::ConnId;
use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

/// Pause after the process ran out of file descriptors, before accepting again.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// The worker's side of accepting: its listeners, whether it accepts, and the connections
/// accepted but not yet admitted by the hub.
pub(super) struct Acceptor {
    listeners: Vec<TcpListener>,
    /// False once the worker stopped accepting for good (reload, exit).
    open: bool,
    /// Out of descriptors: no accepting until then.
    pub paused_until: Option<Instant>,
    out_of_fds_logged: bool,
    next_conn: ConnId,
    /// Connections waiting for the hub's answer to their `Join`.
    pub joining: HashMap<ConnId, usize>,
}

impl Acceptor {
    /// Registers `listeners` with the event loop.
    pub fn new(registry: &Registry, mut listeners: Vec<TcpListener>) -> io::Result<Acceptor> {
        for (i, listener) in listeners.iter_mut().enumerate() {
            if LISTENER_BASE + i >= CLIENT_BASE {
                return Err(io::Error::other("too many listen addresses"));
            }
            registry.register(listener, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        Ok(Acceptor {
            listeners,
            open: true,
            paused_until: None,
            out_of_fds_logged: false,
            next_conn: 1,
            joining: HashMap::new(),
        })
    }

    /// A fresh worker-local connection id.
    pub fn conn_id(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        conn
    }

    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }
}

impl Worker {
    /// Accepts everything queued on one listener.
    pub(super) fn accept(&mut self, index: usize) {
        if !self.accept.open || self.accept.paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.accept.listeners.get(index) else { return };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.accept.out_of_fds_logged {
                        warn!("out of file descriptors; pausing accept ({e})");
                        self.accept.out_of_fds_logged = true;
                    }
                    self.accept.paused_until = Some(Instant::now() + EMFILE_PAUSE);
                    return;
                }
                // The connection died in the queue (ECONNABORTED and friends): next one.
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    /// Stops accepting for good (reload or exit). A last sweep takes what is already queued
    /// so it is served (or handed over) rather than left to the kernel.
    pub(super) fn stop_accepting(&mut self) {
        if !self.accept.open {
            return;
        }
        self.accept_all();
        self.close_listeners();
    }

    /// Stops accepting at once, leaving whatever is queued to the slot's next worker.
    pub(super) fn close_listeners(&mut self) {
        self.accept.open = false;
        for listener in &mut self.accept.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
    }

    pub(super) fn accept_all(&mut self) {
        for index in 0..self.accept.listeners.len() {
            self.accept(index);
        }
    }

    /// The pause after running out of descriptors is over: try again.
    pub(super) fn resume_accepting_if_due(&mut self, now: Instant) {
        if self.accept.paused_until.is_some_and(|at| at <= now) {
            self.accept.paused_until = None;
            self.accept_all();
        }
    }

    /// A new connection: register it and ask the hub to let it in.
    pub(super) fn admit(&mut self, mut stream: mio::net::TcpStream, addr: std::net::SocketAddr) {
        if let Err(e) = crate::listener::tune_accepted(&stream, &self.config.socket) {
            debug!("socket options for {addr}: {e}");
        }
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let token = Token(CLIENT_BASE + key);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot watch connection from {addr}: {e}");
            return;
        }
        let conn = self.accept.conn_id();
        entry.insert(Box::new(Client::new(stream, conn, self.config.chat.max_line_bytes)));
        self.accept.joining.insert(conn, key);
        self.bus.send(&ToHub::Join { conn, addr });
    }
}
