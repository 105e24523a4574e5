//! The supervisor: the main process of `chatd serve`.
//!
//! It owns everything that must outlive a worker: the slots' listening sockets, the hub (the
//! room's state and ordering), the control socket and the conversation with systemd. It never
//! accepts a client itself. Its event loop multiplexes the workers' bus connections, signals and
//! control requests; everything else (restarts, heartbeat checks, status updates) runs on timers
//! from the same loop, so the supervisor is single-threaded apart from the control socket's
//! small reader threads and the `/metrics` responder's (`crate::metrics`), which only ever see
//! a snapshot handed to them (`stats`), and, during an upgrade, the thread waiting for the new
//! binary's answer (`upgrade`). A reload that finds its binary replaced on disk re-executes the
//! supervisor in place before rolling the workers (`upgrade`).

mod cluster;
mod hub;
mod kept;
mod operators;
mod reload;
mod spawn;
mod stats;
mod stored;
mod upgrade;
mod workers;

pub use upgrade::{check_state, resume};

use crate::bus::WorkerOrder;
use crate::config::Config;
use crate::control::server::{ControlSocket, Request};
use crate::control::{ControlCommand, ReloadOutcome, Reply, Status, WorkerStatus};
use crate::listener::{self, Kind};
use crate::signals::Signals;
use crate::systemd::Notifier;
use crossbeam_channel::{Receiver, Sender};
use hub::{Hub, WorkerId};
use log::{error, info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::Socket;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workers::WorkerProc;

/// The signals the supervisor handles; threads it starts block them (`signals`).
const CAUGHT: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD];

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
/// Worker bus connections use `Token(WORKER_BASE + id)`.
const WORKER_BASE: usize = 16;

/// How often timers (heartbeat checks, status, watchdog) run.
const TICK: Duration = Duration::from_secs(1);
/// Restart backoff: starts here, doubles while the worker keeps dying, capped.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that lived this long was healthy; its next crash restarts it quickly again.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A worker this far behind on the bus is stuck; it is killed rather than allowed to make the
/// hub buffer without bound (its clients see it as a crash, the rest of the room goes on).
const MAX_BUS_BACKLOG: usize = 64 * 1024 * 1024;
/// How long workers get to say goodbye to their clients on stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the exiting supervisor waits for the answers to `chatd stop` to be written.
const STOP_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// A timer tick this late means the supervisor itself did not run (stopped, swapped out, busy):
/// its workers' silence over that time is not theirs.
const STALL: Duration = Duration::from_millis(500);

/// A worker slot: its listeners outlive every worker that serves it.
struct Slot {
    listeners: Vec<Socket>,
    worker: Option<WorkerId>,
    backoff: Duration,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(listeners: Vec<Socket>) -> Slot {
        Slot { listeners, worker: None, backoff: FIRST_BACKOFF, restart_at: None }
    }
}

/// The supervisor's own state (its workers have a [`workers::Lifecycle`] each).
#[derive(PartialEq, Eq)]
enum RunState {
    /// Waiting for the first generation of workers to say Hello.
    Starting,
    Running,
    Stopping {
        deadline: Instant,
    },
}

pub struct Supervisor {
    poll: Poll,
    config: Config,
    config_path: PathBuf,
    config_text: String,
    exe: PathBuf,
    /// Listen addresses as configured (port 0 stays 0), to match them on reload.
    listen_config: Vec<SocketAddr>,
    /// The same, as bound.
    listen: Vec<SocketAddr>,
    /// Workers of slots a reload removed, waiting to hand their sessions over.
    removed_workers: Vec<WorkerId>,
    reload: Option<reload::RollingReload>,
    /// A reload that found a new binary, waiting for it to answer the probe.
    upgrade: Option<upgrade::Pending>,
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, WorkerProc>,
    next_worker: WorkerId,
    generation: u64,
    hub: Hub,
    signals: Signals,
    control: Receiver<Request>,
    control_socket: ControlSocket,
    /// Wakes the event loop from other threads (control requests, the upgrade probe).
    waker: Arc<Waker>,
    notifier: Notifier,
    watchdog: Option<Duration>,
    run_state: RunState,
    /// `chatd stop` requests, answered once the workers are gone.
    stop_requests: Vec<(Sender<Reply>, Receiver<()>)>,
    started: Instant,
    next_tick: Instant,
    last_watchdog: Instant,
    last_reload: Option<ReloadOutcome>,
    /// Metrics: the supervisor's own counts and the `/metrics` endpoint.
    stats: stats::Stats,
    /// The room as kept in systemd's descriptor store, to survive a crash (`stored`).
    stored: Option<stored::StoredRoom>,
    /// The workers' kept sessions in systemd's descriptor store (`kept`).
    kept: Option<kept::KeptFiles>,
    /// Sessions a crashed predecessor kept, on their way to the workers (`kept`).
    restoring: Option<kept::Restoring>,
    /// In cluster mode after a crash: the kept sessions, until the stream is read to its end.
    kept_later: Option<kept::Later>,
    /// `chatd who` requests waiting for the workers.
    operators: operators::Operators,
}

/// Entry point of `chatd serve`.
pub fn run(config_path: &Path) -> ExitCode {
    match Supervisor::start(config_path) {
        Ok(mut supervisor) => match supervisor.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

impl Supervisor {
    fn start(config_path: &Path) -> Result<Supervisor, String> {
        let (passed, stored_listeners, kept_entries) = stored::take_passed();
        let config_text = crate::config::read_file(config_path).map_err(|e| e.to_string())?;
        let config = Config::parse(&config_text, &config_path.display().to_string())
            .map_err(|e| e.to_string())?;
        config.check_tls().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let (poll, signals, waker) = event_loop()?;
        let (control_socket, control) = crate::signals::in_threads_blocked(&CAUGHT, || {
            crate::control::server::start(&config.server.control_socket, waker.clone())
        })
        .map_err(|e| format!("control socket {}: {e}", config.server.control_socket.display()))?;

        listener::check_migrate_req();
        let (mut room, cluster_mode) = stored::usable(passed, &config);
        let (slots, listen) = bind_slots(&config, stored_listeners)?;
        // In cluster mode the sessions are paired with the room only once the stream is read
        // to its end (`kept::Later`).
        let (restoring, kept_later) = match (&cluster_mode, room.as_mut()) {
            (Some(_), Some(room)) => (None, Some(kept::Later::new(kept_entries, room))),
            _ => {
                let fate = match room.as_mut() {
                    Some(room) => kept::Fate::Resume { room, back: false },
                    None => kept::Fate::End(kept::NO_ROOM),
                };
                (kept::collect(kept_entries, fate, slots.len()), None)
            }
        };
        let hub = match room {
            Some(saved) => Hub::restore(&config, saved),
            None => Hub::new(&config),
        };
        let now = Instant::now();
        let mut supervisor = Supervisor {
            poll,
            hub,
            exe,
            listen_config: config.listeners().into_iter().map(|(addr, _)| addr).collect(),
            listen,
            removed_workers: Vec::new(),
            reload: None,
            upgrade: None,
            slots,
            workers: BTreeMap::new(),
            next_worker: WorkerId(0),
            generation: 1,
            signals,
            control,
            control_socket,
            waker,
            notifier: Notifier::new(),
            watchdog: Notifier::watchdog_interval(),
            run_state: RunState::Starting,
            stop_requests: Vec::new(),
            started: now,
            next_tick: now + TICK,
            last_watchdog: now,
            last_reload: None,
            stats: stats::Stats::default(),
            operators: operators::Operators::default(),
            stored: stored::StoredRoom::open(stored::cluster_names(&config)),
            kept: kept::KeptFiles::new(),
            restoring,
            kept_later,
            config,
            config_path: config_path.to_path_buf(),
            config_text,
        };
        supervisor.start_metrics()?;
        supervisor.start_cluster(cluster_mode)?;
        for slot in 0..supervisor.slots.len() {
            supervisor.start_worker(slot)?;
        }
        Ok(supervisor)
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("event loop failed: {e}"));
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    CONTROL => {}
                    Token(t) if t >= WORKER_BASE => self.read_bus(WorkerId(t - WORKER_BASE)),
                    Token(_) => {}
                }
            }
            let busy: Vec<WorkerId> =
                self.workers.iter().filter(|(_, w)| w.more_input).map(|(id, _)| *id).collect();
            for id in busy {
                self.read_bus(id);
            }
            while let Ok(request) = self.control.try_recv() {
                self.on_control(request);
            }
            self.check_restored();
            self.pair_kept_later();
            self.tend_operators();
            self.poll_cluster();
            self.on_timers();
            if self.reload.is_some() {
                self.advance_reload();
            }
            if self.upgrade.is_some() {
                self.advance_upgrade();
            }
            self.flush_buses();
            if let RunState::Stopping { .. } = self.run_state {
                if self.workers.is_empty() {
                    info!("all workers stopped; bye");
                    self.answer_stop_requests();
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> Duration {
        if self.workers.values().any(|w| w.more_input) {
            return Duration::ZERO;
        }
        let mut next = self.next_tick;
        for slot in &self.slots {
            if let Some(at) = slot.restart_at {
                next = next.min(at);
            }
        }
        if let RunState::Stopping { deadline } = self.run_state {
            next = next.min(deadline);
        }
        if let Some(deadline) = self.operators_deadline() {
            next = next.min(deadline);
        }
        if let Some(upgrade) = &self.upgrade {
            next = next.min(upgrade.deadline());
        }
        next.saturating_duration_since(Instant::now())
    }

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGINT => {
                    info!("received {}; stopping", signal_name(signal));
                    self.stop();
                }
                libc::SIGHUP => {
                    info!("received SIGHUP; reloading");
                    self.reload(None, None);
                }
                _ => {}
            }
        }
    }

    fn on_control(&mut self, request: Request) {
        let reply = match request.command {
            ControlCommand::Status => Reply::status(self.status()),
            // Answered when the reload is over.
            ControlCommand::Reload => return self.reload(Some(request.reply), request.conn),
            // Answered when the workers are gone.
            ControlCommand::Stop => {
                info!("stop requested on the control socket");
                self.stop();
                self.stop_requests.push((request.reply, request.written));
                return;
            }
            command => return self.on_operator(command, request.reply),
        };
        // The client may have given up waiting; nothing to do about it then.
        let _ = request.reply.send(reply);
    }

    fn stop(&mut self) {
        if matches!(self.run_state, RunState::Stopping { .. }) {
            return;
        }
        self.notifier.stopping();
        self.hub.stop_cluster();
        if let Some(stored) = self.stored.take() {
            stored.clear();
        }
        if let Some(kept) = self.kept.take() {
            kept.clear();
        }
        self.run_state = RunState::Stopping { deadline: Instant::now() + STOP_GRACE };
        if let Some(reload) = self.reload.take() {
            reload.abandon("the server is stopping");
        }
        if let Some(upgrade) = self.upgrade.take() {
            upgrade.abandon("the server is stopping");
        }
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
        for worker in self.workers.values_mut() {
            worker.retire(WorkerOrder::Shutdown);
        }
    }

    /// The server has stopped: answer `chatd stop`, and wait (bounded) until the control
    /// threads wrote the answers, since they die with the process.
    fn answer_stop_requests(&mut self) {
        let requests = std::mem::take(&mut self.stop_requests);
        for (reply, _) in &requests {
            let _ = reply.send(Reply::done("stopped"));
        }
        let deadline = Instant::now() + STOP_ANSWER_WAIT;
        for (_, written) in &requests {
            let _ = written.recv_deadline(deadline);
        }
    }

    /// At startup: once every slot's worker is accepting, announce readiness.
    fn check_started(&mut self) {
        if self.run_state != RunState::Starting || self.serving_slots() < self.slots.len() {
            return;
        }
        self.run_state = RunState::Running;
        self.log_listening();
        self.store_listeners();
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].restart_at.is_some_and(|at| at <= now))
            .collect();
        for slot in due {
            if let Err(e) = self.start_worker(slot) {
                error!("{e}");
                self.schedule_restart(slot);
            }
        }
        if let RunState::Stopping { deadline } = self.run_state {
            if now >= deadline {
                for w in self.workers.values_mut() {
                    warn!("slot {}: worker pid {} did not stop in time; killing", w.slot, w.pid);
                    // Not waited for: the supervisor exits now and must not block on a child.
                    workers::kill_worker(w.pid);
                }
                self.workers.clear();
            }
        }
        if now < self.next_tick {
            return;
        }
        let late = now - self.next_tick;
        self.next_tick = now + TICK;
        if self.hub.expire_events() {
            crate::memory::trim();
        }
        self.check_heartbeats(now, (late > STALL).then_some(late));
        self.publish_metrics();
        if self.run_state == RunState::Running {
            self.update_status();
            if let Some(interval) = self.watchdog {
                if self.all_workers_healthy(now) && now - self.last_watchdog >= interval / 4 {
                    self.notifier.watchdog();
                    self.last_watchdog = now;
                }
            }
        }
    }

    /// `STATUS=`: the slots served, the room and the generation; the fixed form of
    /// docs/operations.md, which scripts parse.
    fn status_line(&self) -> String {
        let mut line = format!(
            "{} workers, {} clients, generation {}",
            self.serving_slots(),
            self.hub.online(),
            self.generation
        );
        if let Some(ReloadOutcome { ok: false, error: Some(e), .. }) = &self.last_reload {
            line.push_str("; last reload failed: ");
            line.push_str(e);
        }
        line.extend(self.cluster_status_line());
        line
    }

    /// Sends `STATUS=` now if its text changed; called whenever a worker comes or goes or a
    /// reload ends, besides the once-a-second refresh that follows the client count.
    fn update_status(&mut self) {
        if self.run_state == RunState::Running {
            let status = self.status_line();
            self.notifier.status(&status);
        }
    }

    fn status(&self) -> Status {
        Status {
            version: crate::version::VERSION.to_string(),
            generation: self.generation,
            listen: self.listening(Kind::Plain),
            clients: self.hub.online(),
            workers: self
                .workers
                .iter()
                .filter(|(_, w)| w.bus_open())
                .map(|(id, w)| WorkerStatus {
                    slot: w.slot,
                    pid: w.pid,
                    generation: w.generation,
                    version: w.version.clone(),
                    clients: self.hub.online_on(*id),
                    uptime_s: w.started.elapsed().as_secs(),
                })
                .collect(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            last_reload: self.last_reload.clone(),
            tls_listen: self.listening(Kind::Tls),
            web_listen: [Kind::Web, Kind::WebTls]
                .into_iter()
                .flat_map(|k| self.listening(k))
                .collect(),
            cluster: self.cluster_status(),
        }
    }
}

impl Supervisor {
    /// The kind of each of a slot's listeners, in the slots' order (the config's).
    fn listener_kinds(&self) -> Vec<Kind> {
        self.config.listeners().into_iter().map(|(_, kind)| kind).collect()
    }

    /// The bound addresses of the listeners of one kind, for `status`.
    fn listening(&self, kind: Kind) -> Vec<String> {
        let kinds = self.listener_kinds();
        let bound = self.listen.iter().zip(kinds).filter(|(_, k)| *k == kind);
        bound.map(|(addr, _)| addr.to_string()).collect()
    }

    /// `listening on IP:PORT with N workers` per address (`(tls)`, `(web)` or `(web, tls)`
    /// after the others), at start and after a reload: scripts read chosen ports from it.
    fn log_listening(&self) {
        for (addr, kind) in self.listen.iter().zip(self.listener_kinds()) {
            let tag = kind.log_tag();
            info!("listening on {addr}{tag} with {} workers", self.slots.len());
        }
    }
}

/// Binds every slot's listeners, first taking those of the same address from `stored` (the
/// crashed supervisor's, `stored`); returns the slots and the effective listen addresses (port 0
/// resolved).
fn bind_slots(
    config: &Config,
    stored: Vec<Socket>,
) -> Result<(Vec<Slot>, Vec<SocketAddr>), String> {
    let count = config.server.workers;
    let mut slots: Vec<Slot> = (0..count).map(|_| Slot::new(Vec::new())).collect();
    let mut listen = Vec::new();
    let mut stored = stored::by_address(stored);
    for (addr, _) in config.listeners() {
        let group = match stored::take_group(&mut stored, addr, count, config.server.backlog) {
            Some(group) => group,
            None => listener::bind_group(addr, count, config.server.backlog, &listen),
        }
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener::local_addr(&group[0]).map_err(|e| format!("{addr}: {e}"))?;
        listen.push(bound);
        for (slot, socket) in slots.iter_mut().zip(group) {
            slot.listeners.push(socket);
        }
    }
    Ok((slots, listen))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// The supervisor's event loop with its signals and the waker of the control thread, as both a
/// fresh start and a supervisor taking over after an exec need them.
fn event_loop() -> Result<(Poll, Signals, Arc<Waker>), String> {
    let poll = Poll::new().map_err(|e| format!("cannot create event loop: {e}"))?;
    let mut signals =
        Signals::new(&CAUGHT).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    poll.registry()
        .register(signals.source(), SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), CONTROL).map_err(|e| format!("cannot create waker: {e}"))?,
    );
    Ok((poll, signals, waker))
}
