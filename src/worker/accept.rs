//! Accepting connections on the slot's listeners.
//!
//! Accept errors that concern one connection are skipped. A worker never takes its last
//! [`FD_RESERVE`] descriptors for clients: when one more connection would, it pauses accepting
//! (logged once) and looks again a little later, so that it neither spins on a listener that
//! stays readable nor leaves a reload without the descriptors it needs. Running out anyway
//! (`EMFILE`, or `ENFILE` for the whole system) pauses the same way.

use super::client::Client;
use super::transport::Transport;
use super::{CLIENT_BASE, LISTENER_BASE, Worker};
use crate::bus::message::ConnId;
use crate::bus::{RoomRequest, ToHub};
use crate::listener::Kind;
use log::{debug, warn};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use nix::sys::resource::{Resource, getrlimit};
use std::collections::HashMap;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// Pause after the process ran out of file descriptors, before accepting again.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// Descriptors below its open-files limit (`RLIMIT_NOFILE`) that a worker does not use for
/// clients it accepts, so that a reload can still reach a worker that serves as many clients as
/// the limit allows. A reload passes descriptors over the bus, and one that finds no free
/// descriptor number is lost on the way: the hand-off then could not even start. The reserve
/// covers the hand-off channels an old worker is given (one per new worker it deals its
/// sessions to, at most `handoff::MAX_CHANNELS`), the channels a new worker receives sessions on
/// (one per old worker handing over to it: more than one when a reload changes the number of
/// slots), and leaves the rest for sessions coming in beyond what the new worker had room for
/// and for any file the process opens briefly. Adopted sessions may use it; accepted
/// connections may not.
pub(super) const FD_RESERVE: usize = 8;

/// The worker's side of accepting: its listeners, whether it accepts, and the connections
/// accepted but not yet admitted by the hub.
pub(super) struct Acceptor {
    listeners: Vec<TcpListener>,
    /// What each listener's connections speak.
    kinds: Vec<Kind>,
    /// False once the worker stopped accepting for good (reload, exit).
    open: bool,
    /// Out of descriptors: no accepting until then.
    pub paused_until: Option<Instant>,
    out_of_fds_logged: bool,
    /// The descriptors the process held when the worker was built (standard streams, bus,
    /// listeners, event loop, signals), sorted: the base of [`Worker::fds_in_use`].
    fds_at_start: Vec<RawFd>,
    next_conn: ConnId,
    /// Connections waiting for the hub's answer to their `Join`.
    pub joining: HashMap<ConnId, usize>,
}

impl Acceptor {
    /// Registers `listeners` with the event loop.
    pub fn new(registry: &Registry, listeners: Vec<(TcpListener, Kind)>) -> io::Result<Acceptor> {
        let (mut listeners, kinds): (Vec<TcpListener>, Vec<Kind>) = listeners.into_iter().unzip();
        for (i, listener) in listeners.iter_mut().enumerate() {
            if LISTENER_BASE + i >= CLIENT_BASE {
                return Err(io::Error::other("too many listen addresses"));
            }
            registry.register(listener, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        let fds_at_start = open_fds(&listeners);
        Ok(Acceptor {
            listeners,
            kinds,
            open: true,
            paused_until: None,
            out_of_fds_logged: false,
            fds_at_start,
            next_conn: ConnId(1),
            joining: HashMap::new(),
        })
    }

    /// A fresh worker-local connection id.
    pub fn conn_id(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn = conn.next();
        conn
    }

    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }
}

/// The descriptors open in this process, sorted: the entries of `/proc/self/fd` but the one
/// listing them. Without `/proc`, every number below the lowest free one, which is right while
/// the numbers in use have no gaps (as in a freshly started worker).
fn open_fds(listeners: &[TcpListener]) -> Vec<RawFd> {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let listed: Vec<RawFd> =
            dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        // The listing has the directory's own descriptor too, closed by now.
        let mut open: Vec<RawFd> = listed.into_iter().filter(|&fd| fd_is_open(fd)).collect();
        open.sort_unstable();
        return open;
    }
    let lowest_free = listeners
        .first()
        .and_then(|l| l.as_fd().try_clone_to_owned().ok())
        .map_or(0, |fd| fd.as_raw_fd());
    (0..lowest_free).collect()
}

/// Whether `fd` is an open descriptor of this process.
fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; a number that is not open is an error.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// The soft limit on open descriptors, read each time: it may be changed from outside
/// (`prlimit`).
fn fd_limit() -> usize {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map_or(usize::MAX, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
}

impl Worker {
    /// Accepts everything queued on one listener, while descriptors are left.
    pub(super) fn accept(&mut self, index: usize) {
        if !self.accept.open || self.accept.paused_until.is_some() {
            return;
        }
        let limit = fd_limit();
        loop {
            let in_use = self.fds_in_use(limit);
            if in_use + 1 + FD_RESERVE > limit {
                let why =
                    format!("{in_use} open of {limit} allowed, {FD_RESERVE} kept for reloads");
                return self.pause_accepting(why);
            }
            let Some(listener) = self.accept.listeners.get(index) else { return };
            let kind = self.accept.kinds[index];
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr, kind),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return self.pause_accepting(e);
                }
                // The connection died in the queue (ECONNABORTED and friends): next one.
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    /// Descriptors the worker holds: those it started with, a socket per client and a hand-off
    /// channel per reload under way.
    fn fds_in_use(&self, limit: usize) -> usize {
        // Those above the limit (inherited ones, say) take no number a new descriptor could get.
        let at_start = self.accept.fds_at_start.partition_point(|&fd| (fd as usize) < limit);
        at_start + self.clients.len() + self.handoff.channels()
    }

    /// No accepting for a while: connections wait in the listener's queue meanwhile.
    fn pause_accepting(&mut self, why: impl Display) {
        if !self.accept.out_of_fds_logged {
            warn!("out of file descriptors; pausing accept ({why})");
            self.accept.out_of_fds_logged = true;
        }
        self.accept.paused_until = Some(Instant::now() + EMFILE_PAUSE);
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

    /// A new connection: register it and ask the hub to let it in, or (a layered transport)
    /// start its opening phase, after which it asks (`transport::opening`).
    pub(super) fn admit(&mut self, stream: mio::net::TcpStream, addr: SocketAddr, kind: Kind) {
        if let Err(e) = crate::listener::tune_accepted(&stream, &self.config.socket) {
            debug!("socket options for {addr}: {e}");
        }
        self.counters.connections += 1;
        let Some(transport) = Transport::accepted(kind, addr, self.openings.tls.as_ref()) else {
            self.counters.tls_rejected += 1;
            return warn!("cannot start a {kind} session with {addr}");
        };
        let opening = matches!(transport, Transport::Layered(_));
        if opening {
            if !self.openings.admits(addr.ip(), self.config.server.max_clients_per_ip) {
                self.counters.tls_rejected += 1;
                return debug!("{kind} connection from {addr} refused: too many opening");
            }
            self.openings.started(addr.ip());
        }
        let conn = self.accept.conn_id();
        let max_line_bytes = self.config.chat.max_line_bytes;
        let make = |s| Client::new(s, transport, conn, max_line_bytes);
        let key = match self.add_client(stream, make) {
            Ok(key) => key,
            Err(e) => {
                if opening {
                    self.openings.ended(addr.ip());
                }
                return warn!("cannot watch connection from {addr}: {e}");
            }
        };
        if !opening {
            self.accept.joining.insert(conn, key);
            self.bus.send(&ToHub::Room(RoomRequest::Join { conn, addr }));
        }
    }
}
