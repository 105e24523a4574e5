//! The new image's side of an upgrade: `chatd serve --config PATH --resume-fd N` adopts what
//! the state in descriptor N names and goes on with the reload that asked for the upgrade.

use super::read_all;
use super::state::{SupervisorState, ago, from_now};
use crate::bad_frame::Peer;
use crate::bus::BusConn;
use crate::bus::conn::Parked;
use crate::cloexec;
use crate::config::Config;
use crate::control;
use crate::control::Reply;
use crate::signals;
use crate::supervisor::hub::{Hub, WorkerId};
use crate::supervisor::operators::Operators;
use crate::supervisor::stats::Stats;
use crate::supervisor::workers::{Lifecycle, WorkerProc};
use crate::supervisor::{CAUGHT, RunState, Slot, Supervisor, TICK, WORKER_BASE, event_loop};
use crate::systemd::Notifier;
use crossbeam_channel::Sender;
use log::{error, info};
use mio::{Interest, Token};
use socket2::Socket;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The reload that asked for the upgrade: who waits for its answer, the config text it read,
/// when it started.
type ResumedReload = (Option<Sender<Reply>>, String, Instant);

/// Entry point of `chatd serve --resume-fd N`.
pub fn resume(state_fd: RawFd) -> ExitCode {
    let resumed = Supervisor::resume(state_fd);
    // Signals were blocked by the old image for the exec; handlers are in place now (or the
    // process is about to exit).
    let _ = signals::block(&CAUGHT, false);
    match resumed {
        Ok((mut supervisor, reload)) => {
            supervisor.reap();
            // The reload that asked for the upgrade goes on: the workers roll onto this binary.
            if let Some((reply, text, started)) = reload {
                supervisor.apply_reload(reply, Ok(text), started);
            }
            match supervisor.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            error!("cannot take over from the previous binary: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Takes ownership of a descriptor the previous image left open for this one, and makes it
/// close-on-exec again.
fn adopt(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: the number is checked to be open first; the previous image kept it open for
    // exactly this adoption and nothing else in this image has taken it (an open descriptor's
    // number is never handed out again), and each number in the state is adopted once.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    cloexec::set(borrowed).map_err(|e| format!("descriptor {fd}: {e}"))?;
    // SAFETY: as above: open, and owned by nobody else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Supervisor {
    fn resume(state_fd: RawFd) -> Result<(Supervisor, Option<ResumedReload>), String> {
        let bytes = read_all(File::from(adopt(state_fd)?))?;
        let state = SupervisorState::decode(&bytes).map_err(|e| e.to_string())?;
        let SupervisorState { header, config_path, config_text, .. } = &state;
        let config = Config::parse(config_text, &config_path.display().to_string())
            .map_err(|e| e.to_string())?;
        info!(
            "re-executed: chatd {} takes over from chatd {} (state format {})",
            crate::version::VERSION,
            header.release,
            header.version
        );
        let (poll, signals, waker) = event_loop()?;
        let listener = std::os::unix::net::UnixListener::from(adopt(state.control_fd)?);
        let path = config.server.control_socket.clone();
        let (control_socket, control) = signals::in_threads_blocked(&CAUGHT, || {
            control::server::adopt(listener, &path, waker.clone())
        })
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;

        let mut slots = Vec::new();
        for saved in &state.slots {
            let mut listeners = Vec::new();
            for &fd in &saved.listeners {
                listeners.push(Socket::from(adopt(fd)?));
            }
            let mut slot = Slot::new(listeners);
            slot.worker = saved.worker.map(WorkerId);
            slot.backoff = Duration::from_millis(saved.backoff_ms);
            slot.restart_at = saved.restart_in_ms.map(from_now);
            slots.push(slot);
        }
        let mut workers = BTreeMap::new();
        for w in state.workers {
            let id = WorkerId(w.id);
            let peer = Peer::Worker { slot: w.slot, pid: w.pid };
            let open = w.bus.is_some();
            let mut conn = match w.bus {
                Some(bus) => {
                    let stream = std::os::unix::net::UnixStream::from(adopt(bus.fd)?);
                    let parked = Parked { unread: bus.unread, unsent: bus.unsent };
                    BusConn::resume(mio::net::UnixStream::from_std(stream), peer, parked)
                }
                // Closed already: a closed stand-in keeps the worker's record until it is reaped.
                None => {
                    let (stream, _) = mio::net::UnixStream::pair()
                        .map_err(|e| format!("cannot create a socketpair: {e}"))?;
                    BusConn::new(stream, peer)
                }
            };
            if !matches!(w.state, Lifecycle::Gone { .. }) {
                poll.registry()
                    .register(
                        conn.stream(),
                        Token(WORKER_BASE + id.0),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| format!("cannot watch worker bus: {e}"))?;
            }
            workers.insert(
                id,
                WorkerProc {
                    slot: w.slot,
                    generation: w.generation,
                    pid: w.pid,
                    conn,
                    started: ago(w.age_ms),
                    state: w.state,
                    version: w.version,
                    handoff_version: w.handoff_version,
                    last_heartbeat: ago(w.heartbeat_age_ms),
                    // Whatever waits on an open bus is read on the first turn.
                    more_input: open,
                    took_over: w.took_over,
                    counters: w.counters,
                },
            );
        }
        let hub = Hub::restore(&config, state.hub);
        let metrics_listener = match state.metrics.fd {
            Some(fd) => Some(std::net::TcpListener::from(adopt(fd)?)),
            None => None,
        };
        let stats = Stats::restore(state.metrics);
        let now = Instant::now();
        let reload = state.reload.map(|r| {
            let reply = r.client_fd.and_then(|fd| {
                let stream = std::os::unix::net::UnixStream::from(adopt(fd).ok()?);
                signals::in_threads_blocked(&CAUGHT, || control::server::answer_later(stream)).ok()
            });
            (reply, r.config_text, ago(r.started_ms))
        });
        let mut supervisor = Supervisor {
            poll,
            hub,
            exe: state.exe,
            listen_config: state.listen_config,
            listen: state.listen,
            removed_workers: Vec::new(),
            reload: None,
            upgrade: None,
            slots,
            workers,
            next_worker: WorkerId(state.next_worker),
            generation: state.generation,
            signals,
            control,
            control_socket,
            waker,
            notifier: Notifier::with_status(state.status_text),
            watchdog: Notifier::watchdog_interval(),
            run_state: RunState::Running,
            stop_requests: Vec::new(),
            started: ago(state.uptime_ms),
            next_tick: now + TICK,
            last_watchdog: ago(state.last_watchdog_ms),
            last_reload: state.last_reload,
            stats,
            operators: Operators::starting_at(state.next_inspect),
            stored: super::super::stored::StoredRoom::open(super::super::stored::cluster_names(
                &config,
            )),
            kept: super::super::kept::KeptFiles::new(),
            kept_later: None,
            restoring: None,
            config,
            config_path: state.config_path,
            config_text: state.config_text,
        };
        if let Some(listener) = metrics_listener {
            supervisor.adopt_metrics(listener)?;
        }
        supervisor.resume_cluster(state.cluster)?;
        Ok((supervisor, reload))
    }
}
