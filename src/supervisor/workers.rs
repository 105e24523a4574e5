//! The worker processes seen from the supervisor: starting them, reading their bus, noticing
//! when one dies or hangs, and replacing it.
//!
//! A worker's end is noticed twice: its bus closes (its clients leave the room at once) and the
//! process is reaped (its slot's restart is scheduled). Only a slot's current worker is
//! replaced; a previous generation's ending is expected.

use super::hub::{Outbox, WorkerId};
use super::{
    FIRST_BACKOFF, HEALTHY_AFTER, MAX_BACKOFF, MAX_BUS_BACKLOG, RunState, Supervisor, WORKER_BASE,
    spawn,
};
use crate::bus::BusConn;
use crate::bus::conn::Fill;
use crate::bus::{RoomUpdate, ToHub, ToWorker, WorkerCounters, WorkerOrder, WorkerReport, frame};
use crate::config::duration;
use log::{error, info, warn};
use mio::{Interest, Token};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where a worker process is in its life, as the supervisor sees it. Part of the state an
/// upgrade carries (`upgrade::state`): renaming a variant changes that format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Lifecycle {
    /// Spawned; it has not said Hello yet.
    Starting,
    /// It said Hello: it accepts on its slot's listeners.
    Ready,
    /// Reload: told to hand its sessions to a successor, so no longer accepting. `done` once it
    /// reported every session sent.
    HandingOff { done: bool },
    /// Reload without hand-off: no longer accepting, serving its clients until they leave.
    Draining,
    /// Told to exit (after a hand-off, or on stop).
    Retiring,
    /// Its bus is closed; the process is waiting to be reaped. `expected`: it was told to go.
    Gone { expected: bool },
}

/// One worker process.
pub(super) struct WorkerProc {
    pub slot: usize,
    pub generation: u64,
    /// Reaped by pid, not through a `std::process::Child`: a supervisor that re-executed
    /// itself (`upgrade`) is still the parent of workers it did not spawn in this image.
    pub pid: u32,
    pub conn: BusConn,
    pub started: Instant,
    pub state: Lifecycle,
    /// The release it runs (from Hello; empty before).
    pub version: String,
    /// The session hand-off version it speaks (from Hello).
    pub handoff_version: u32,
    pub last_heartbeat: Instant,
    /// The last read stopped at its budget; read again without waiting for an event.
    pub more_input: bool,
    /// Its predecessor on the slot stopped accepting in its favour (reload): should it die, the
    /// slot has nobody accepting, so it is replaced at once instead of after a backoff.
    pub took_over: bool,
    /// What it counted, as of its last heartbeat.
    pub counters: WorkerCounters,
}

impl WorkerProc {
    pub fn bus_open(&self) -> bool {
        !matches!(self.state, Lifecycle::Gone { .. })
    }

    /// Accepting new connections on its slot's listeners.
    pub fn accepting(&self) -> bool {
        self.state == Lifecycle::Ready
    }

    /// Its end was asked for: not a crash.
    pub fn end_expected(&self) -> bool {
        matches!(
            self.state,
            Lifecycle::Draining | Lifecycle::Retiring | Lifecycle::Gone { expected: true }
        )
    }

    /// Tells it to go (`Exit`, `Shutdown`) or to drain; its end is expected from now on.
    pub fn retire(&mut self, order: WorkerOrder) {
        if !self.bus_open() {
            return;
        }
        self.state = match order {
            WorkerOrder::Drain { .. } => Lifecycle::Draining,
            _ => Lifecycle::Retiring,
        };
        self.conn.send(&ToWorker::Control(order));
    }
}

/// How a worker process ended, if it has (reaping it); `None` while it runs.
fn exit_status(pid: u32) -> Option<String> {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status: {code}")),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(format!("signal: {signal}")),
        Ok(_) => None,
        // Not our child (any more): nothing left to wait for.
        Err(_) => Some("already reaped".to_string()),
    }
}

/// Kills a worker without waiting for it (the reaper collects it).
pub(super) fn kill_worker(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The hub's view of the workers: frames go into their bus buffers.
pub(super) struct Mailboxes<'a>(pub(super) &'a mut BTreeMap<WorkerId, WorkerProc>);

impl Outbox for Mailboxes<'_> {
    fn to_worker(&mut self, worker: WorkerId, msg: RoomUpdate) {
        if let Some(w) = self.0.get_mut(&worker).filter(|w| w.bus_open()) {
            w.conn.send(&ToWorker::Room(msg));
        }
    }

    fn to_all(&mut self, msg: RoomUpdate) {
        let frame = match frame::encode(&ToWorker::Room(msg)) {
            Ok(frame) => frame,
            Err(e) => return error!("bus: {e}"),
        };
        for w in self.0.values_mut().filter(|w| w.bus_open()) {
            w.conn.send_encoded(&frame);
        }
    }
}

impl Supervisor {
    /// Forks the worker for `slot` with the current config and generation.
    pub(super) fn start_worker(&mut self, slot: usize) -> Result<(), String> {
        let setup = WorkerOrder::Setup {
            slot,
            generation: self.generation,
            config: self.config_text.clone(),
            config_path: self.config_path.display().to_string(),
        };
        let spawned = spawn::spawn_worker(
            &self.exe,
            slot,
            self.generation,
            &self.slots[slot].listeners,
            &self.listener_kinds(),
            setup,
            self.kept.is_some(),
        )
        .map_err(|e| format!("cannot start worker for slot {slot}: {e}"))?;
        let id = self.next_worker;
        self.next_worker = id.next();
        let mut conn = spawned.conn;
        self.poll
            .registry()
            .register(
                conn.stream(),
                Token(WORKER_BASE + id.0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot watch worker bus: {e}"))?;
        let pid = spawned.pid;
        let now = Instant::now();
        self.workers.insert(
            id,
            WorkerProc {
                slot,
                generation: self.generation,
                pid,
                conn,
                started: now,
                state: Lifecycle::Starting,
                version: String::new(),
                handoff_version: 0,
                last_heartbeat: now,
                more_input: false,
                took_over: false,
                counters: WorkerCounters::default(),
            },
        );
        let slot_state = &mut self.slots[slot];
        slot_state.worker = Some(id);
        slot_state.restart_at = None;
        info!("slot {slot}: started worker pid {pid} (generation {})", self.generation);
        Ok(())
    }

    pub(super) fn read_bus(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id).filter(|w| w.bus_open()) else { return };
        let fill = worker.conn.fill();
        worker.more_input = matches!(fill, Ok(Fill::More));
        if worker.more_input {
            // Traffic is a sign of life too: a worker busy with a flood is not hung.
            worker.last_heartbeat = Instant::now();
        }
        loop {
            let Some(worker) = self.workers.get_mut(&id) else { return };
            let msg = match worker.conn.next_message::<ToHub>() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    // Logged with the worker's name; the bus is already shut down.
                    self.drop_worker(id);
                    return;
                }
            };
            worker.last_heartbeat = Instant::now();
            match msg {
                ToHub::Control(report) => self.on_report(id, report),
                ToHub::Room(request) => {
                    self.hub.handle(id, request, &mut Mailboxes(&mut self.workers))
                }
            }
        }
        match fill {
            Ok(Fill::Closed) => self.drop_worker(id),
            Err(e) => {
                warn!("worker bus read failed: {e}");
                self.drop_worker(id);
            }
            Ok(_) => {}
        }
    }

    /// What a worker says about itself.
    fn on_report(&mut self, id: WorkerId, report: WorkerReport) {
        let Some(worker) = self.workers.get_mut(&id) else { return };
        match report {
            WorkerReport::Hello { pid, handoff, version, .. } => {
                if worker.state == Lifecycle::Starting {
                    worker.state = Lifecycle::Ready;
                }
                worker.handoff_version = handoff;
                worker.version = version;
                info!("slot {}: worker pid {pid} ready", worker.slot);
                let slot = worker.slot;
                self.hub.sync(id, &mut Mailboxes(&mut self.workers));
                self.hand_restored(id, slot);
                self.check_started();
                self.update_status();
            }
            WorkerReport::Heartbeat { counters } => worker.counters = counters,
            WorkerReport::HandoffDone { sessions } => {
                info!("slot {}: pid {} handed over {sessions} sessions", worker.slot, worker.pid);
                if let Lifecycle::HandingOff { done } = &mut worker.state {
                    *done = true;
                }
            }
            WorkerReport::Draining => {
                warn!(
                    "slot {}: pid {} cannot hand its sessions over; it drains instead",
                    worker.slot, worker.pid
                );
                if let Lifecycle::HandingOff { .. } = worker.state {
                    worker.state = Lifecycle::Draining;
                }
            }
            WorkerReport::Sessions { id: asked, sessions, last } => {
                self.on_sessions(id, asked, sessions, last)
            }
            WorkerReport::Kept { file } => {
                let fd = worker.conn.take_fd();
                if let (Some(kept), Some(fd)) = (self.kept.as_mut(), fd) {
                    kept.store(id, file, fd);
                }
            }
        }
    }

    /// The worker's bus is unusable (EOF, error, garbage): its clients are gone from the room,
    /// and the process is killed to be sure; reaping it schedules the restart.
    pub(super) fn drop_worker(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id) else { return };
        if !worker.bus_open() {
            return;
        }
        let expected = worker.end_expected();
        worker.state = Lifecycle::Gone { expected };
        worker.more_input = false;
        let _ = self.poll.registry().deregister(worker.conn.stream());
        if !expected {
            let _ = kill(Pid::from_raw(worker.pid as i32), Signal::SIGKILL);
        }
        if !matches!(self.run_state, RunState::Stopping { .. }) {
            self.hub.worker_lost(id, &mut Mailboxes(&mut self.workers));
        }
        self.update_status();
    }

    /// Collects exited workers and schedules their slots' restarts.
    pub(super) fn reap(&mut self) {
        let stopping = matches!(self.run_state, RunState::Stopping { .. });
        let exited: Vec<WorkerId> = self
            .workers
            .iter_mut()
            .filter_map(|(id, w)| {
                let status = exit_status(w.pid)?;
                if w.end_expected() || stopping {
                    info!("slot {}: worker pid {} exited ({status})", w.slot, w.pid);
                } else {
                    warn!("slot {}: worker pid {} died ({status})", w.slot, w.pid);
                }
                Some(*id)
            })
            .collect();
        for id in exited {
            self.drop_worker(id);
            let Some(worker) = self.workers.remove(&id) else { continue };
            if let Some(kept) = self.kept.as_mut() {
                kept.forget(id);
            }
            self.stats.retire(&worker.counters);
            // Only a slot's current worker is replaced: an old generation's is done.
            let Some(slot) = self.slots.get_mut(worker.slot) else { continue };
            if slot.worker != Some(id) || stopping {
                continue;
            }
            slot.worker = None;
            self.stats.worker_restarted();
            if worker.started.elapsed() >= HEALTHY_AFTER {
                slot.backoff = FIRST_BACKOFF;
            }
            if worker.took_over {
                // Its predecessor no longer accepts: waiting out a backoff would leave the
                // slot's connections unanswered (docs/architecture.md).
                info!("slot {}: the worker that took over died; replacing it now", worker.slot);
                if let Err(e) = self.start_worker(worker.slot) {
                    error!("{e}");
                    self.schedule_restart(worker.slot);
                }
            } else {
                self.schedule_restart(worker.slot);
            }
        }
    }

    /// Restarts the slot's worker after its backoff, which doubles for next time.
    pub(super) fn schedule_restart(&mut self, slot: usize) {
        let slot_index = slot;
        let slot = &mut self.slots[slot_index];
        slot.restart_at = Some(Instant::now() + slot.backoff);
        info!("slot {slot_index}: restarting in {}", duration::display(slot.backoff));
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    /// A worker that stopped heartbeating (hung, or stopped with SIGSTOP) is killed; the reaper
    /// replaces it. Only silence the worker is to blame for counts: heartbeats waiting unread
    /// on the bus are read first, and after a stall of the supervisor itself (`stalled`, the
    /// time it was not running) every worker gets a fresh grace period.
    pub(super) fn check_heartbeats(&mut self, now: Instant, stalled: Option<Duration>) {
        if matches!(self.run_state, RunState::Stopping { .. }) {
            return;
        }
        if let Some(stall) = stalled {
            warn!(
                "the supervisor did not run for {}; workers get a fresh grace period",
                duration::display(stall)
            );
            for w in self.workers.values_mut() {
                w.last_heartbeat = now;
            }
            return;
        }
        let limit = self.config.server.heartbeat_timeout;
        let silent = |w: &WorkerProc| w.bus_open() && now - w.last_heartbeat > limit;
        let suspects: Vec<WorkerId> =
            self.workers.iter().filter(|(_, w)| silent(w)).map(|(id, _)| *id).collect();
        for id in suspects {
            self.read_bus(id);
            let Some(w) = self.workers.get(&id).filter(|w| silent(w)) else { continue };
            warn!(
                "slot {}: worker pid {} silent for {}; killing it",
                w.slot,
                w.pid,
                duration::display(now - w.last_heartbeat)
            );
            self.drop_worker(id);
        }
    }

    pub(super) fn all_workers_healthy(&self, now: Instant) -> bool {
        let limit = self.config.server.heartbeat_timeout;
        self.slots.iter().all(|s| {
            s.worker
                .and_then(|id| self.workers.get(&id))
                .is_some_and(|w| w.accepting() && now - w.last_heartbeat <= limit)
        })
    }

    /// Slots whose current worker accepts: the `N workers` of `STATUS=`.
    pub(super) fn serving_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.worker.and_then(|id| self.workers.get(&id)).is_some_and(|w| w.accepting())
            })
            .count()
    }

    pub(super) fn flush_buses(&mut self) {
        // The room is written down (when due) before the events that changed it go out.
        if let Some(stored) = &mut self.stored {
            stored.save(&self.hub);
        }
        let mut broken = Vec::new();
        for (id, w) in self.workers.iter_mut().filter(|(_, w)| w.bus_open()) {
            if let Err(e) = w.conn.flush() {
                warn!("slot {}: bus write to pid {} failed: {e}", w.slot, w.pid);
                broken.push(*id);
            } else if w.conn.pending_out() > MAX_BUS_BACKLOG {
                error!(
                    "slot {}: worker pid {} is {} MiB behind on the bus; killing it",
                    w.slot,
                    w.pid,
                    w.conn.pending_out() >> 20
                );
                broken.push(*id);
            }
        }
        for id in broken {
            self.drop_worker(id);
        }
    }
}
