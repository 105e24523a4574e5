//! Reload, seen from a worker: handing sessions to a successor, receiving them, or draining.
//!
//! The old worker stops accepting (the slot's listener stays open in the supervisor and the new
//! worker accepts from the same queue), then sends each live session — socket and state — over
//! the hand-off channel, or deals them out over several (`outgoing`). The new worker registers the socket, flushes what was
//! unsent, tells the hub it adopted the session and, with the hub's replay of the events the
//! session missed in transit, puts it back in the room (`incoming`). Lines the hub still sends
//! to the old worker for a moved session are forwarded over the same channel until the
//! supervisor says `Exit`.
//!
//! Both sides work in slices: a turn of the event loop moves a bounded number of sessions and
//! bytes, so heartbeats, the bus and everything else the loop does stay on time however many
//! sessions move and however much output they carry.

mod incoming;
mod outgoing;

use super::{CLOSE_GRACE, Worker};
use crate::bus::ToHub;
use crate::bus::WorkerReport;
use crate::bus::message::{LeaveReason, SessionId};
use log::info;
use slab::Slab;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The worker's part in reloads: sessions going out to a successor, coming in from
/// predecessors, or a drain.
#[derive(Default)]
pub(super) struct Handoff {
    /// The channels sessions go out on.
    outgoing: Option<outgoing::Outgoing>,
    /// Sessions already sent, with the channel each went through: what the hub still sends
    /// for them is forwarded there.
    pub moved: HashMap<SessionId, usize>,
    /// Channels sessions come in on.
    incoming: Slab<incoming::Incoming>,
    /// An incoming channel has more to read or to process: come back without waiting.
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
        self.incoming.len() + self.outgoing.as_ref().map_or(0, outgoing::Outgoing::open_channels)
    }
}

fn to_mio_unix(fd: OwnedFd) -> std::io::Result<mio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(mio::net::UnixStream::from_std(stream))
}

impl Worker {
    /// The hand-off cannot start: the clients are served here until they leave or the drain
    /// timeout passes, and the supervisor is told, so the reload goes on without waiting.
    fn drain_instead(&mut self) {
        self.bus.send(&ToHub::Control(WorkerReport::Draining));
        self.start_drain(self.config.reload.drain_timeout);
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
