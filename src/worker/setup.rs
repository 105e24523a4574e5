//! Worker start-up: adopt the descriptors the supervisor passed across exec, read the setup
//! frame, and build the event loop.

use super::Worker;
use crate::bus::frame::{self, HEADER_LEN};
use crate::bus::{ToHub, ToWorker, WorkerOrder, WorkerReport};
use crate::cloexec;
use crate::config::Config;
use crate::listener::{Kind, ListenFd};
use crate::signals::{self, Signals};
use mio::net::{TcpListener, UnixStream};
use nix::sys::signal::Signal;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, RawFd};

/// The command line of `chatd worker` (written by the supervisor, not by people).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub slot: usize,
    #[arg(long)]
    pub generation: u64,
    #[arg(long)]
    pub bus_fd: RawFd,
    /// `FD` or `KIND:FD` (`tls:7`): a listener and what its connections speak.
    #[arg(long = "listen-fd")]
    pub listen_fds: Vec<ListenFd>,
    /// Under systemd: keep the sessions through a crash of the supervisor (`kept`).
    #[arg(long)]
    pub keep_sessions: bool,
}

pub(super) fn start(args: Args) -> Result<Worker, String> {
    // SAFETY: the supervisor passed these descriptors to us across exec, named on our command
    // line; nothing else in this process owns them.
    let bus = unsafe { std::os::unix::net::UnixStream::from_raw_fd(args.bus_fd) };
    let listeners: Vec<(TcpListener, Kind)> = args
        .listen_fds
        .iter()
        // SAFETY: as for the bus: passed across exec for us alone, each named once.
        .map(|l| (unsafe { std::net::TcpListener::from_raw_fd(l.fd) }, l.kind))
        .map(|(listener, kind)| (TcpListener::from_std(listener), kind))
        .collect();
    // Inherited descriptors must not leak into anything this process might start.
    for fd in listeners.iter().map(|(l, _)| l.as_fd()).chain([bus.as_fd()]) {
        cloexec::set(fd).map_err(|e| format!("close-on-exec: {e}"))?;
    }
    let (config_text, config_path) = read_setup(&bus)?;
    let config = Config::parse(&config_text, &config_path).map_err(|e| e.to_string())?;
    // New TLS connections get the certificate on disk now; the supervisor checked it before
    // starting this generation.
    let tls = config.check_tls().map_err(|e| e.to_string())?;
    bus.set_nonblocking(true).map_err(|e| format!("bus: {e}"))?;

    // Ctrl-C in a terminal reaches the whole process group; the supervisor decides.
    for signal in [Signal::SIGINT, Signal::SIGHUP] {
        signals::ignore(signal).map_err(|e| format!("signals: {e}"))?;
    }
    let signals = Signals::new(&[libc::SIGTERM]).map_err(|e| format!("signals: {e}"))?;
    let mut worker = Worker::new(config, UnixStream::from_std(bus), listeners, tls, signals)
        .map_err(|e| format!("event loop: {e}"))?;
    worker.bus.send(&ToHub::Control(WorkerReport::Hello {
        slot: args.slot,
        pid: std::process::id(),
        generation: args.generation,
        handoff: crate::bus::handoff::VERSION,
        version: crate::version::VERSION.to_string(),
    }));
    if args.keep_sessions {
        worker.start_keeping();
    }
    log::debug!("generation {} up with {} listeners", args.generation, worker.accept.listeners());
    // Connections may have queued on the slot's listeners while no worker served it.
    worker.accept_all();
    Ok(worker)
}

/// Reads the setup frame with a blocking read: nothing can happen before it.
fn read_setup(bus: &std::os::unix::net::UnixStream) -> Result<(String, String), String> {
    let mut reader = bus;
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| format!("reading setup: {e}"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > frame::MAX_FRAME_LEN {
        return Err(format!("setup frame of bad length {len}"));
    }
    let mut bytes = header.to_vec();
    bytes.resize(4 + len, 0);
    reader.read_exact(&mut bytes[HEADER_LEN..]).map_err(|e| format!("reading setup: {e}"))?;
    match frame::decode::<ToWorker>(&bytes) {
        Ok(Some((ToWorker::Control(WorkerOrder::Setup { config, config_path, .. }), _))) => {
            Ok((config, config_path))
        }
        Ok(_) => Err("the first bus frame is not a setup frame".into()),
        Err(e) => Err(format!("setup frame: {e}")),
    }
}
