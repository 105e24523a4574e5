//! Accepting connections on the slot's listeners.
//!
//! Accept errors that concern one connection are skipped; running out of descriptors pauses
//! accepting briefly (logged once) instead of spinning on a listener that stays readable.

use super::client::Client;
use super::{CLIENT_BASE, EMFILE_PAUSE, Worker};
use crate::bus::{RoomRequest, ToHub};
use log::{debug, warn};
use mio::{Interest, Token};
use std::io;
use std::time::Instant;

impl Worker {
    /// Accepts everything queued on one listener.
    pub(super) fn accept(&mut self, index: usize) {
        if !self.accepting || self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(index) else { return };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.emfile_logged {
                        warn!("out of file descriptors; pausing accept ({e})");
                        self.emfile_logged = true;
                    }
                    self.accept_paused_until = Some(Instant::now() + EMFILE_PAUSE);
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
        if !self.accepting {
            return;
        }
        self.accept_all();
        self.accepting = false;
        for listener in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
    }

    pub(super) fn accept_all(&mut self) {
        for index in 0..self.listeners.len() {
            self.accept(index);
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
        let conn = self.next_conn;
        self.next_conn = conn.next();
        entry.insert(Box::new(Client::new(stream, conn, self.config.chat.max_line_bytes)));
        self.joining.insert(conn, key);
        self.bus.send(&ToHub::Room(RoomRequest::Join { conn, addr }));
    }
}
