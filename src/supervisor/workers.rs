//! The worker processes seen from the supervisor: starting them, reading their bus, noticing
//! when one dies or hangs, and replacing it.
//!
//! A worker's end is noticed twice: its bus closes (its clients leave the room at once) and the
//! process is reaped (its slot's restart is scheduled). Only a slot's current worker is
//! replaced; a previous generation's ending is expected.

use super::hub::{Outbox, WorkerId};
use super::{
    FIRST_BACKOFF, HEALTHY_AFTER, MAX_BACKOFF, MAX_BUS_BACKLOG, Phase, Supervisor, WORKER_BASE,
    Worker, spawn,
};
use crate::bus::conn::Fill;
use crate::bus::{ToHub, ToWorker, frame};
use log::{error, info, warn};
use mio::{Interest, Token};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::Instant;

/// The hub's view of the workers: frames go into their bus buffers.
pub(super) struct Mailboxes<'a>(pub(super) &'a mut BTreeMap<WorkerId, Worker>);

impl Outbox for Mailboxes<'_> {
    fn to_worker(&mut self, worker: WorkerId, msg: &ToWorker) {
        if let Some(w) = self.0.get_mut(&worker).filter(|w| w.bus_open) {
            w.conn.send(msg);
        }
    }

    fn to_all(&mut self, msg: &ToWorker) {
        let frame = match frame::encode(msg) {
            Ok(frame) => frame,
            Err(e) => return error!("bus: {e}"),
        };
        for w in self.0.values_mut().filter(|w| w.bus_open) {
            w.conn.send_encoded(&frame);
        }
    }
}

impl Supervisor {
    /// Forks the worker for `slot` with the current config and generation.
    pub(super) fn start_worker(&mut self, slot: usize) -> Result<(), String> {
        let setup = ToWorker::Setup {
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
            &setup,
        )
        .map_err(|e| format!("cannot start worker for slot {slot}: {e}"))?;
        let id = self.next_worker;
        self.next_worker += 1;
        let mut conn = spawned.conn;
        self.poll
            .registry()
            .register(
                conn.stream(),
                Token(WORKER_BASE + id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot watch worker bus: {e}"))?;
        let pid = spawned.child.id();
        let now = Instant::now();
        self.workers.insert(
            id,
            Worker {
                slot,
                generation: self.generation,
                pid,
                child: spawned.child,
                conn,
                started: now,
                ready: false,
                last_heartbeat: now,
                bus_open: true,
                more_input: false,
                handoff_version: 0,
                handoff_done: false,
                retiring: false,
            },
        );
        let slot_state = &mut self.slots[slot];
        slot_state.worker = Some(id);
        slot_state.restart_at = None;
        info!("slot {slot}: started worker pid {pid} (generation {})", self.generation);
        Ok(())
    }

    pub(super) fn read_bus(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id).filter(|w| w.bus_open) else { return };
        let fill = worker.conn.fill();
        worker.more_input = matches!(fill, Ok(Fill::More));
        if matches!(fill, Ok(Fill::More | Fill::Drained)) {
            // Traffic is a sign of life too: a worker busy with a flood is not hung.
            worker.last_heartbeat = Instant::now();
        }
        loop {
            let Some(worker) = self.workers.get_mut(&id) else { return };
            let msg = match worker.conn.next_message::<ToHub>() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    error!(
                        "slot {}: malformed bus frame from pid {}: {e}",
                        worker.slot, worker.pid
                    );
                    self.drop_worker(id);
                    return;
                }
            };
            match msg {
                ToHub::Hello { pid, handoff, .. } => {
                    worker.ready = true;
                    worker.handoff_version = handoff;
                    info!("slot {}: worker pid {pid} ready", worker.slot);
                    self.hub.sync(id, &mut Mailboxes(&mut self.workers));
                    self.check_started();
                }
                ToHub::Heartbeat => worker.last_heartbeat = Instant::now(),
                ToHub::HandoffDone { sessions } => {
                    info!(
                        "slot {}: pid {} handed over {sessions} sessions",
                        worker.slot, worker.pid
                    );
                    worker.handoff_done = true;
                }
                msg => self.hub.handle(id, msg, &mut Mailboxes(&mut self.workers)),
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

    /// The worker's bus is unusable (EOF, error, garbage): its clients are gone from the room,
    /// and the process is killed to be sure; reaping it schedules the restart.
    pub(super) fn drop_worker(&mut self, id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&id) else { return };
        if !worker.bus_open {
            return;
        }
        worker.bus_open = false;
        worker.more_input = false;
        let _ = self.poll.registry().deregister(worker.conn.stream());
        if !worker.retiring {
            let _ = kill(Pid::from_raw(worker.pid as i32), Signal::SIGKILL);
        }
        if !matches!(self.phase, Phase::Stopping { .. }) {
            self.hub.worker_lost(id, &mut Mailboxes(&mut self.workers));
        }
    }

    /// Collects exited workers and schedules their slots' restarts.
    pub(super) fn reap(&mut self) {
        let exited: Vec<WorkerId> = self
            .workers
            .iter_mut()
            .filter_map(|(id, w)| match w.child.try_wait() {
                Ok(Some(status)) => {
                    if w.retiring || matches!(self.phase, Phase::Stopping { .. }) {
                        info!("slot {}: worker pid {} exited ({status})", w.slot, w.pid);
                    } else {
                        warn!("slot {}: worker pid {} died ({status})", w.slot, w.pid);
                    }
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for id in exited {
            self.drop_worker(id);
            let Some(worker) = self.workers.remove(&id) else { continue };
            // Only a slot's current worker is replaced: an old generation's is done.
            let Some(slot) = self.slots.get_mut(worker.slot) else { continue };
            if slot.worker != Some(id) || matches!(self.phase, Phase::Stopping { .. }) {
                continue;
            }
            slot.worker = None;
            if worker.started.elapsed() >= HEALTHY_AFTER {
                slot.backoff = FIRST_BACKOFF;
            }
            self.schedule_restart(worker.slot);
        }
    }

    /// Restarts the slot's worker after its backoff, which doubles for next time.
    pub(super) fn schedule_restart(&mut self, slot: usize) {
        let slot_index = slot;
        let slot = &mut self.slots[slot_index];
        slot.restart_at = Some(Instant::now() + slot.backoff);
        info!("slot {slot_index}: restarting in {:?}", slot.backoff);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    /// A worker that stopped heartbeating (hung, or stopped with SIGSTOP) is killed; the reaper
    /// replaces it.
    pub(super) fn check_heartbeats(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let limit = self.config.server.heartbeat_timeout;
        let hung: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.bus_open && now - w.last_heartbeat > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in hung {
            if let Some(w) = self.workers.get(&id) {
                warn!(
                    "slot {}: worker pid {} silent for {:?}; killing it",
                    w.slot,
                    w.pid,
                    now - w.last_heartbeat
                );
            }
            self.drop_worker(id);
        }
    }

    pub(super) fn all_workers_healthy(&self, now: Instant) -> bool {
        let limit = self.config.server.heartbeat_timeout;
        self.slots.iter().all(|s| {
            s.worker
                .and_then(|id| self.workers.get(&id))
                .is_some_and(|w| w.ready && w.bus_open && now - w.last_heartbeat <= limit)
        })
    }

    pub(super) fn flush_buses(&mut self) {
        let mut broken = Vec::new();
        for (id, w) in self.workers.iter_mut().filter(|(_, w)| w.bus_open) {
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
