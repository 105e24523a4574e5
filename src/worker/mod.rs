//! A worker process: one single-threaded event loop serving thousands of clients.
//!
//! The worker accepts on its slot's listeners (inherited from the supervisor), decodes what
//! clients type, and forwards it to the hub over the bus; it writes back whatever the hub sends,
//! in the hub's order. Besides "which session is which socket" it keeps only a copy of the
//! room's presence and history, rebuilt from the hub's events (`room_state`), so any worker can
//! serve any client and the processes are simply the parallelism.

mod accept;
mod client;
mod handoff;
mod input;
mod lifecycle;
mod output;
pub mod rate;
mod room_state;
mod setup;

pub use setup::Args;

use crate::bus::handoff::Transfer;
use crate::bus::message::{ConnId, LeaveReason, SessionId};
use crate::bus::{
    BusConn, RoomRequest, RoomUpdate, ToHub, ToWorker, WorkerOrder, WorkerReport, conn::Fill,
};
use crate::config::Config;
use crate::signals::Signals;
use client::{Client, Phase};
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Poll, Token};
use room_state::RoomState;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
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
/// The same for a client cut as too slow: by definition it reads slowly, and it should still get
/// the rest of its last line, the notice and what the kernel already holds for it.
const SLOW_READER_GRACE: Duration = Duration::from_secs(10);
/// Client output is written in passes over the room: a burst of room lines then costs one
/// `write` per client instead of one per line, and a line after a quiet spell goes out at once.
/// Each `write` to a TCP socket costs the kernel far more than the bytes in it (~6 µs here, ~90%
/// of a busy worker's profile is kernel TCP), so how often a pass may start sets the server's
/// efficiency. A pass starts at most every `FLUSH_INTERVAL` in a small room; in a big one, the
/// next pass waits until `FLUSH_DUTY` times the last one's duration has passed since it started,
/// up to `MAX_FLUSH_CYCLE`. With 1,000 busy clients on two workers (a pass ~4 ms) that is one
/// write per client every ~10 ms instead of every ~5: ~40% less CPU and lower p99 latency,
/// because the clients' own side gets the CPU it needs to read (benches/README.md, S2).
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);
const FLUSH_DUTY: u32 = 3;
const MAX_FLUSH_CYCLE: Duration = Duration::from_millis(10);
/// A pass over many clients goes back to the event loop this often, so input and the bus are
/// not held up while thousands of clients are written to.
const PASS_SLICE: Duration = Duration::from_millis(1);
const PASS_SLICE_CLIENTS: usize = 256;
/// How often closing connections are checked for the peer's acknowledgement.
const LINGER_CHECK: Duration = Duration::from_millis(5);
/// Pause after the process ran out of file descriptors, before accepting again.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);
/// Bus bytes read per loop turn (see `BusConn::with_fill_budget`).
const BUS_READ_BUDGET: usize = 256 * 1024;
/// One read from a client takes at most this much.
const READ_CHUNK: usize = 64 * 1024;

pub struct Worker {
    poll: Poll,
    config: Config,
    bus: BusConn,
    bus_more: bool,
    signals: Signals,
    listeners: Vec<TcpListener>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    emfile_logged: bool,
    /// Boxed: the slab's spare capacity then costs a pointer per slot, not a whole client.
    clients: Slab<Box<Client>>,
    joining: HashMap<ConnId, usize>,
    sessions: HashMap<SessionId, usize>,
    next_conn: ConnId,
    /// Clients with output queued this turn.
    dirty: Vec<usize>,
    /// Clients waiting for the bus to drain before their input is processed.
    stalled: Vec<usize>,
    /// Room bytes since the last tick, and whether a burst since the last memory trim.
    room_bytes_since_tick: usize,
    trim_due: bool,
    /// When the last client flush started, how long after that the next one may start, and
    /// when it is scheduled.
    last_flush: Instant,
    flush_cycle: Duration,
    flush_at: Option<Instant>,
    /// The pass over the room's clients in progress, if any.
    pass: Option<output::Pass>,
    /// Closing clients whose FIN is out: dropped once the peer acknowledged everything.
    lingering: Vec<usize>,
    /// Rate-limited clients by the time they may send again.
    throttled: BinaryHeap<Reverse<(Instant, usize, ConnId)>>,
    /// Room lines since the last flush, shared by every client in the room (see `output`).
    room: Vec<u8>,
    scratch: Vec<u8>,
    /// The last room event delivered (every client in the room has had all up to here).
    last_seq: u64,
    /// Presence and history, for `/who`, `/history` and joiners.
    room_state: RoomState,
    /// Reload: the channel sessions go out on, and the sessions already sent.
    outgoing: Option<handoff::Outgoing>,
    moved: HashSet<SessionId>,
    /// Reload: channels sessions come in on.
    incoming: Slab<BusConn>,
    incoming_more: bool,
    /// Reload without hand-off: when to give up on the remaining clients.
    drain_deadline: Option<Instant>,
    next_tick: Instant,
    next_heartbeat: Instant,
    /// Set when the worker is going away: the exit code and the deadline for last flushes.
    exiting: Option<(ExitCode, Instant)>,
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
    fn run(&mut self) -> ExitCode {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("event loop failed: {e}");
                    return ExitCode::FAILURE;
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
            if std::mem::take(&mut self.incoming_more) {
                let open: Vec<usize> = self.incoming.iter().map(|(i, _)| i).collect();
                for index in open {
                    self.read_incoming(index);
                }
            }
            self.on_timers();
            self.maybe_flush_clients();
            self.reap_lingering();
            self.flush_bus();
            self.flush_outgoing();
            if self.drain_deadline.is_some() && self.clients.is_empty() && self.exiting.is_none() {
                info!("drained");
                self.exiting = Some((ExitCode::SUCCESS, Instant::now()));
            }
            if let Some((code, deadline)) = &self.exiting {
                let done = self.clients.is_empty() && self.outgoing_flushed();
                if done || Instant::now() >= *deadline {
                    let _ = self.bus.flush();
                    info!("exiting");
                    return *code;
                }
            }
        }
    }

    fn next_timeout(&self) -> Duration {
        if self.bus_more || self.incoming_more || self.pass.is_some() {
            return Duration::ZERO;
        }
        let mut next = self.next_tick;
        if let Some(at) = self.flush_at {
            next = next.min(at);
        }
        if !self.lingering.is_empty() {
            next = next.min(Instant::now() + LINGER_CHECK);
        }
        if let Some(Reverse((at, _, _))) = self.throttled.peek() {
            next = next.min(*at);
        }
        if let Some(at) = self.accept_paused_until {
            next = next.min(at);
        }
        if let Some((_, deadline)) = self.exiting {
            next = next.min(deadline);
        }
        if let Some(deadline) = self.drain_deadline {
            next = next.min(deadline);
        }
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
        if self.exiting.is_none() {
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
                self.room_line(&line, skip);
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
                if let Some(key) = self.joining.remove(&conn) {
                    let client = &mut self.clients[key];
                    client.left = true;
                    client.queue_line(&line);
                    client.start_closing(Instant::now() + CLOSE_GRACE);
                    self.mark_dirty(key);
                }
            }
            ToWorker::Room(RoomUpdate::Direct { session, lines }) => {
                if self.moved.contains(&session) {
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
                let fd = self.bus.take_fd();
                self.start_handoff(fd);
            }
            ToWorker::Control(WorkerOrder::Receive) => {
                let fd = self.bus.take_fd();
                self.start_receiving(fd);
            }
            ToWorker::Room(RoomUpdate::Resume { session, lines }) => self.resume(session, lines),
            ToWorker::Room(RoomUpdate::Replay { session, lines }) => self.replay(session, lines),
            ToWorker::Room(RoomUpdate::Answer { session, query }) => self.answer(session, query),
            ToWorker::Control(WorkerOrder::Drain { timeout_ms }) => {
                self.start_drain(Duration::from_millis(timeout_ms))
            }
            ToWorker::Control(WorkerOrder::Exit) => {
                info!("hand-off complete; exiting");
                self.exiting = Some((ExitCode::SUCCESS, Instant::now() + CLOSE_GRACE));
            }
            ToWorker::Control(WorkerOrder::Shutdown) => {
                info!("shutdown requested");
                self.begin_exit("* server shutting down", ExitCode::SUCCESS);
            }
            ToWorker::Control(WorkerOrder::Setup { .. }) => {
                warn!("unexpected second setup frame; ignored")
            }
        }
    }

    fn on_admitted(&mut self, conn: ConnId, session: SessionId, welcome: String) {
        let Some(key) = self.joining.remove(&conn) else {
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
        client.room_from = Some(self.room.len());
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
        self.mark_dirty(key);
        if self.outgoing.is_some() {
            self.hand_off_ready();
        } else {
            self.service(key);
        }
    }

    fn flush_bus(&mut self) {
        if let Err(e) = self.bus.flush() {
            error!("bus write failed: {e}");
            self.supervisor_lost();
            return;
        }
        if self.bus.pending_out() < BUS_HIGH_WATER / 2 && !self.stalled.is_empty() {
            for key in std::mem::take(&mut self.stalled) {
                self.service(key);
            }
        }
    }

    // ----- timers ------------------------------------------------------------------------

    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, key, conn))) = self.throttled.peek().copied() {
            if at > now {
                break;
            }
            self.throttled.pop();
            if let Some(client) = self.clients.get_mut(key).filter(|c| c.conn == conn) {
                client.throttled = false;
                self.service(key);
            }
        }
        if self.drain_deadline.is_some_and(|at| at <= now) && self.exiting.is_none() {
            self.end_drain();
        }
        if self.accept_paused_until.is_some_and(|at| at <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        self.heartbeat_if_due(now);
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        if self.exiting.is_none() {
            // Connections migrated from a closed sibling listener may not wake epoll.
            self.accept_all();
        }
        self.check_idle_and_closing(now);
        self.trim_memory_when_quiet();
    }

    /// Tells the supervisor we are alive, once a second. Called from the loop and from inside
    /// long stretches of work (a flush to thousands of clients during a join storm), so a busy
    /// worker is never taken for a hung one. Goes on while exiting, too.
    pub(super) fn heartbeat_if_due(&mut self, now: Instant) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + TICK;
            self.bus.send(&ToHub::Control(WorkerReport::Heartbeat));
            let _ = self.bus.flush();
        }
    }

    /// Drops closing connections whose last bytes the peer has acknowledged. Closing earlier,
    /// with unread input or unacknowledged output, could turn into a reset that destroys the
    /// last lines in flight; waiting for the peer's own close could take forever.
    fn reap_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for key in std::mem::take(&mut self.lingering) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            if !client.is_closing() {
                continue;
            }
            if client.unacked() == 0 {
                client.discard_input(&mut self.scratch);
                self.remove(key);
            } else {
                still.push(key);
            }
        }
        self.lingering = still;
    }

    /// After a burst of traffic, once a tick passes quietly, the freed buffers are handed back
    /// to the kernel: a room that was busy once should not keep its peak memory for good.
    fn trim_memory_when_quiet(&mut self) {
        let quiet = std::mem::take(&mut self.room_bytes_since_tick) == 0;
        if !quiet {
            self.trim_due = true;
        } else if self.trim_due {
            self.trim_due = false;
            crate::memory::trim();
        }
    }

    fn check_idle_and_closing(&mut self, now: Instant) {
        let idle_timeout = self.config.chat.idle_timeout;
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (key, client) in self.clients.iter_mut() {
            client.release_idle_buffers();
            match client.phase {
                Phase::Closing { deadline, .. } if deadline <= now => expired.push(key),
                Phase::Live if idle_timeout.is_some_and(|t| now - client.last_line > t) => {
                    idle.push(key);
                }
                _ => {}
            }
        }
        for key in idle {
            self.disconnect(key, "* disconnected: idle", LeaveReason::Idle);
        }
        for key in expired {
            self.remove(key);
        }
    }
}
