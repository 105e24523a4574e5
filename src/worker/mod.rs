//! A worker process: one single-threaded event loop serving thousands of clients.
//!
//! The worker accepts on its slot's listeners (inherited from the supervisor), decodes what
//! clients type, and forwards it to the hub over the bus; it writes back whatever the hub sends,
//! in the hub's order. Besides "which session is which socket" it keeps only a copy of the
//! room's presence and history, rebuilt from the hub's events (`room_state`), so any worker can
//! serve any client and the processes are simply the parallelism.
//!
//! This module holds the event loop and the bus; the state of each other concern lives in a
//! struct owned by the module that handles it: accepting (`accept`), input (`input`), output
//! passes (`output`), reloads (`handoff`), the worker's own life and the end of connections
//! (`lifecycle`).

mod accept;
mod client;
mod handoff;
mod input;
mod inspect;
mod kept;
mod lifecycle;
mod output;
pub mod rate;
mod room_state;
mod setup;
#[cfg(test)]
mod tests;
mod transport;

pub use setup::Args;

use crate::bad_frame::Peer;
use crate::bus::handoff::Transfer;
use crate::bus::message::{ConnId, LeaveReason, SessionId};
use crate::bus::{
    BusConn, RoomRequest, RoomUpdate, ToHub, ToWorker, WorkerCounters, WorkerOrder, conn::Fill,
};
use crate::config::Config;
use crate::listener::Kind;
use crate::signals::Signals;
use crate::tls::TlsAcceptor;
use accept::Acceptor;
use client::{Client, Phase};
use handoff::Handoff;
use input::Intake;
use lifecycle::Lifetime;
use log::{error, info, warn};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use output::Output;
use room_state::RoomState;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BUS: Token = Token(0);
const SIGNALS: Token = Token(1);
const HANDOFF_OUT: Token = Token(2);
const LISTENER_BASE: usize = 3;
const INCOMING_BASE: usize = 1 << 16;
const CLIENT_BASE: usize = 1 << 20;

/// Heartbeat, idle checks and the accept sweep run this often.
const TICK: Duration = Duration::from_secs(1);
/// Client input is not processed while this much is waiting to go to the hub.
const BUS_HIGH_WATER: usize = 8 * 1024 * 1024;
/// How long a closing connection may take to flush its last lines.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Bus bytes read per loop turn (see `BusConn::with_fill_budget`).
const BUS_READ_BUDGET: usize = 256 * 1024;

/// A worker: its clients, its link to the hub, and the state of each of its concerns, owned by
/// the module that handles it.
pub struct Worker {
    poll: Poll,
    config: Config,
    bus: BusConn,
    /// The last bus read stopped at its budget; read again without waiting for an event.
    bus_more: bool,
    signals: Signals,
    /// Boxed: the slab's spare capacity then costs a pointer per slot, not a whole client.
    clients: Slab<Box<Client>>,
    sessions: HashMap<SessionId, usize>,
    /// The last room event delivered (every client in the room has had all up to here).
    last_seq: u64,
    /// Presence and history, for `/who`, `/history` and joiners.
    room_state: RoomState,
    /// New connections (`accept`).
    accept: Acceptor,
    /// What clients send (`input`).
    input: Intake,
    /// What clients are sent, and when (`output`).
    output: Output,
    /// Reload: sessions going out, coming in, or a drain (`handoff`).
    handoff: Handoff,
    /// Ticks, heartbeats and the way out (`lifecycle`).
    life: Lifetime,
    /// Connections whose transport is still opening, and the certificate (`transport`).
    openings: transport::Openings,
    /// What this worker counted, reported with every heartbeat: plain increments where things
    /// happen (a single-threaded process needs neither locks nor atomics).
    counters: WorkerCounters,
    /// Under systemd: the table and bag that keep sessions through a crash (`kept`).
    kept: Option<kept::Kept>,
}

/// Entry point of the hidden `chatd worker` subcommand.
pub fn run(args: Args) -> ExitCode {
    crate::logging::init(format!("worker {}/g{}", args.slot, args.generation));
    let mut worker = match setup::start(args) {
        Ok(worker) => worker,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    worker.run()
}

impl Worker {
    /// A worker serving `listeners`, talking to the hub over `bus` and told to stop by
    /// `signals`, with everything registered with a new event loop. It has not said `Hello`
    /// nor accepted anything yet.
    pub fn new(
        config: Config,
        bus: UnixStream,
        listeners: Vec<(TcpListener, Kind)>,
        tls: Option<TlsAcceptor>,
        mut signals: Signals,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let mut bus = BusConn::with_fill_budget(bus, Peer::Supervisor, BUS_READ_BUDGET);
        let registry = poll.registry();
        registry.register(bus.stream(), BUS, Interest::READABLE | Interest::WRITABLE)?;
        registry.register(signals.source(), SIGNALS, Interest::READABLE)?;
        let accept = Acceptor::new(registry, listeners)?;
        let room_state = RoomState::new(config.chat.history, config.chat.history_events);
        let openings = transport::Openings::new(tls, config.tls.handshake_timeout);
        Ok(Worker {
            poll,
            config,
            bus,
            bus_more: false,
            signals,
            clients: Slab::new(),
            sessions: HashMap::new(),
            last_seq: 0,
            room_state,
            accept,
            input: Intake::new(),
            output: Output::new(),
            handoff: Handoff::default(),
            life: Lifetime::new(),
            openings,
            counters: WorkerCounters::default(),
            kept: None,
        })
    }

    fn run(&mut self) -> ExitCode {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Some(code) = self.turn(&mut events) {
                return code;
            }
        }
    }

    /// One turn of the event loop: waits for events (at most until the next timer), handles
    /// them and does the work that is due. Returns the exit code once the worker is done.
    fn turn(&mut self, events: &mut Events) -> Option<ExitCode> {
        let timeout = self.next_timeout();
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                error!("event loop failed: {e}");
                return Some(ExitCode::FAILURE);
            }
        }
        for event in events.iter() {
            match event.token() {
                BUS => self.read_bus(),
                SIGNALS => {
                    if self.signals.pending().contains(&libc::SIGTERM) {
                        info!("received SIGTERM; closing");
                        self.begin_exit("* server shutting down", ExitCode::SUCCESS);
                    }
                }
                HANDOFF_OUT => self.flush_outgoing(),
                Token(t) if t >= CLIENT_BASE => {
                    let key = t - CLIENT_BASE;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        if let Some(c) = self.clients.get_mut(key) {
                            c.can_read = true;
                        }
                        self.service(key);
                    }
                    if event.is_writable() {
                        self.flush_backlog(key);
                        self.mark_dirty(key);
                    }
                }
                Token(t) if t >= INCOMING_BASE => self.read_incoming(t - INCOMING_BASE),
                Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
                Token(_) => {}
            }
        }
        if self.bus_more {
            self.read_bus();
        }
        self.read_incoming_more();
        self.on_timers();
        self.maybe_flush_clients();
        self.reap_lingering();
        self.continue_handoff();
        self.flush_bus();
        self.flush_outgoing();
        if self.drained() {
            info!("drained");
            self.life.exit_by(ExitCode::SUCCESS, Instant::now());
        }
        let (code, deadline) = self.life.exiting?;
        let done = self.clients.is_empty() && self.outgoing_flushed();
        if done || Instant::now() >= deadline {
            self.report_counters();
            let _ = self.bus.flush();
            info!("exiting");
            return Some(code);
        }
        None
    }

    fn next_timeout(&self) -> Duration {
        if self.bus_more
            || self.handoff.incoming_more
            || self.handoff.outgoing_due()
            || self.output.in_pass()
        {
            return Duration::ZERO;
        }
        let deadlines = [
            self.output.next_deadline(),
            self.input.next_deadline(),
            self.accept.paused_until,
            self.life.exiting.map(|(_, deadline)| deadline),
            self.handoff.drain_deadline,
        ];
        let next = deadlines.into_iter().flatten().fold(self.life.next_tick, Instant::min);
        next.saturating_duration_since(Instant::now())
    }

    // ----- the bus -------------------------------------------------------------------------

    fn read_bus(&mut self) {
        let fill = self.bus.fill();
        self.bus_more = matches!(fill, Ok(Fill::More));
        loop {
            match self.bus.next_message::<ToWorker>() {
                Ok(Some(msg)) => self.on_bus(msg),
                Ok(None) => break,
                Err(_) => {
                    self.supervisor_lost();
                    return;
                }
            }
        }
        match fill {
            Ok(Fill::Closed) => self.supervisor_lost(),
            Err(e) => {
                error!("bus read failed: {e}");
                self.supervisor_lost();
            }
            Ok(_) => {}
        }
    }

    fn supervisor_lost(&mut self) {
        // Kept sessions are left for the next supervisor; only the others are told.
        self.leave_kept_sessions();
        if !self.life.is_exiting() {
            error!("lost the supervisor; telling clients and exiting");
        }
        self.bus_more = false;
        let _ = self.poll.registry().deregister(self.bus.stream());
        self.begin_exit("* server stopped unexpectedly, please reconnect", ExitCode::FAILURE);
    }

    fn on_bus(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Room(RoomUpdate::Line { skip, line, seq, event }) => {
                self.last_seq = seq;
                self.room_line(&line, skip, seq);
                self.room_state.apply(event, line);
            }
            ToWorker::Room(RoomUpdate::Sync { seq }) => {
                self.last_seq = self.last_seq.max(seq);
                self.room_state.reset();
            }
            ToWorker::Room(RoomUpdate::Snapshot { members, history }) => {
                self.room_state.load(members, history)
            }
            ToWorker::Room(RoomUpdate::Admitted { conn, session, welcome }) => {
                self.on_admitted(conn, session, welcome)
            }
            ToWorker::Room(RoomUpdate::Refused { conn, line }) => {
                if let Some(key) = self.accept.joining.remove(&conn) {
                    let client = &mut self.clients[key];
                    client.left = true;
                    client.queue_line(&line);
                    client.start_closing(Instant::now() + CLOSE_GRACE);
                    self.mark_dirty(key);
                }
            }
            ToWorker::Room(RoomUpdate::Direct { session, lines }) => {
                if self.handoff.moved.contains_key(&session) {
                    self.forward(session, Transfer::Direct { session, lines });
                } else if let Some(&key) = self.sessions.get(&session) {
                    self.send_lines(key, &lines);
                }
            }
            ToWorker::Room(RoomUpdate::Left { session }) => {
                if self.forward(session, Transfer::Left { session }) {
                    return;
                }
                if let Some(&key) = self.sessions.get(&session) {
                    self.close(key);
                }
            }
            ToWorker::Control(WorkerOrder::HandOff) => {
                // Its channels are every descriptor received so far: nothing else sends an old
                // worker descriptors.
                let fds = self.bus.take_all_fds();
                self.start_handoff(fds);
            }
            ToWorker::Control(WorkerOrder::Receive) => {
                let fd = self.bus.take_fd();
                self.start_receiving(fd);
            }
            ToWorker::Room(RoomUpdate::Resume { session, lines }) => self.resume(session, lines),
            ToWorker::Room(RoomUpdate::Replay { session, lines }) => self.replay(session, lines),
            ToWorker::Room(RoomUpdate::Answer { session, query }) => self.answer(session, query),
            ToWorker::Room(RoomUpdate::Log { line }) => info!("{line}"),
            ToWorker::Control(WorkerOrder::Drain { timeout_ms }) => {
                self.start_drain(Duration::from_millis(timeout_ms))
            }
            ToWorker::Control(WorkerOrder::Exit) => {
                info!("hand-off complete; exiting");
                self.life.exit_by(ExitCode::SUCCESS, Instant::now() + CLOSE_GRACE);
            }
            ToWorker::Control(WorkerOrder::Shutdown) => {
                info!("shutdown requested");
                self.begin_exit("* server shutting down", ExitCode::SUCCESS);
            }
            ToWorker::Control(WorkerOrder::Inspect { id }) => self.inspect(id),
            ToWorker::Control(WorkerOrder::Setup { .. }) => {
                warn!("unexpected second setup frame; ignored")
            }
        }
    }

    fn on_admitted(&mut self, conn: ConnId, session: SessionId, welcome: String) {
        let Some(key) = self.accept.joining.remove(&conn) else {
            // The client went away while the hub was admitting it.
            self.bus
                .send(&ToHub::Room(RoomRequest::Leave { session, reason: LeaveReason::Closed }));
            return;
        };
        let client = &mut self.clients[key];
        if client.phase != Phase::Joining {
            self.bus
                .send(&ToHub::Room(RoomRequest::Leave { session, reason: LeaveReason::Closed }));
            return;
        }
        client.session = Some(session);
        client.phase = Phase::Live;
        client.room_from = Some(self.output.room_len());
        client.bucket = self
            .config
            .chat
            .rate_limit
            .as_ref()
            .map(|limit| rate::TokenBucket::new(limit, Instant::now()));
        client.queue_line(&welcome);
        let budget = self.config.chat.max_backlog_bytes / 2;
        for line in self.room_state.recent(self.config.chat.history_on_join, budget) {
            client.queue_line(line);
        }
        self.sessions.insert(session, key);
        self.keep(key, self.last_seq);
        self.mark_dirty(key);
        if self.handoff.is_handing_off() {
            self.queue_for_handoff(key);
        } else {
            self.service(key);
        }
    }

    /// Watches `stream` and adds the client `make` builds around it (accepted, or adopted from
    /// the previous worker); its key. Nothing is added when the socket cannot be watched.
    fn add_client(
        &mut self,
        mut stream: mio::net::TcpStream,
        make: impl FnOnce(mio::net::TcpStream) -> Client,
    ) -> io::Result<usize> {
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll.registry().register(&mut stream, Token(CLIENT_BASE + key), interest)?;
        entry.insert(Box::new(make(stream)));
        Ok(key)
    }

    fn flush_bus(&mut self) {
        if let Err(e) = self.bus.flush() {
            error!("bus write failed: {e}");
            self.supervisor_lost();
            return;
        }
        if self.bus.pending_out() < BUS_HIGH_WATER / 2 {
            self.resume_stalled();
        }
    }

    // ----- timers ------------------------------------------------------------------------

    fn on_timers(&mut self) {
        let now = Instant::now();
        self.wake_throttled(now);
        self.end_drain_if_due(now);
        self.resume_accepting_if_due(now);
        self.heartbeat_if_due(now);
        if now < self.life.next_tick {
            return;
        }
        self.life.next_tick = now + TICK;
        if !self.life.is_exiting() {
            // Connections migrated from a closed sibling listener may not wake epoll.
            self.accept_all();
        }
        self.check_idle_and_closing(now);
        self.expire_openings(now);
        self.output.trim_memory_when_quiet();
    }
}
