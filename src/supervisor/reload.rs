//! The rolling reload (docs/control.md, "Reload"), as a small state machine driven by the
//! supervisor's loop.
//!
//! A reload validates the new config, then rolls the slots one at a time: start the new
//! generation's worker on the slot's existing listeners, wait until it accepts, then tell the
//! old worker to hand its sessions over (or to drain, when hand-off is off or the two binaries
//! speak different hand-off versions). A slot is done when the hub has seen every session of
//! the old worker adopted by the new one; then the old worker is told to exit. Slots removed by
//! a smaller `workers` hand their sessions to a remaining slot's new worker the same way.
//! Listeners are never closed while a worker may still accept from them, except those of
//! removed slots and addresses, which go once the reload is over.

use super::workers::{Lifecycle, Mailboxes};
use super::{RunState, Slot, Supervisor, WorkerId};
use crate::bus::{ToWorker, WorkerOrder};
use crate::config::Config;
use crate::control::{ReloadOutcome, Reply};
use crate::listener;
use crossbeam_channel::Sender;
use log::{error, info, warn};
use socket2::Socket;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// One unit of work of a reload.
enum Step {
    /// Give `slot` a new-generation worker and move the old one's sessions to it.
    Roll { slot: usize, old: Option<WorkerId> },
    /// A removed slot's worker hands its sessions to `target`'s new worker.
    Retire { old: WorkerId, target: usize },
}

enum Progress {
    /// Waiting for the target slot's new worker to accept.
    Starting,
    /// Sessions are moving from the old worker to `to`.
    HandingOff { to: WorkerId },
}

/// A reload in progress (the `[reload]` settings it follows are `config::Reload`).
pub(super) struct RollingReload {
    reply: Option<Sender<Reply>>,
    steps: VecDeque<Step>,
    current: Option<(Step, Progress)>,
    /// Listeners of removed slots and addresses, closed once the reload is over.
    retired_listeners: Vec<Socket>,
    started: Instant,
}

impl RollingReload {
    /// The reload cannot finish (the server is stopping).
    pub(super) fn abandon(self, why: &str) {
        if let Some(tx) = self.reply {
            let _ = tx.send(Reply::failed(why));
        }
    }
}

impl Supervisor {
    /// Starts a reload (from `chatd reload` when `reply` is set, else from SIGHUP).
    pub(super) fn reload(&mut self, reply: Option<Sender<Reply>>) {
        let answer = |reply: Option<Sender<Reply>>, r: Reply| {
            if let Some(tx) = reply {
                let _ = tx.send(r);
            }
        };
        if self.run_state != RunState::Running {
            return answer(
                reply,
                Reply::failed("the server is not running (starting or stopping)"),
            );
        }
        if self.reload.is_some() {
            return answer(reply, Reply::failed("a reload is already in progress"));
        }
        let started = Instant::now();
        let origin = self.config_path.display().to_string();
        let parsed =
            crate::config::read_file(&self.config_path).map_err(|e| e.to_string()).and_then(
                |text| Config::parse(&text, &origin).map(|c| (c, text)).map_err(|e| e.to_string()),
            );
        let prepared = parsed
            .and_then(|(config, text)| self.rebind(&config).map(|retired| (config, text, retired)));
        let (config, text, retired_listeners) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                error!("reload failed, keeping the running config: {e}");
                self.reload_failed(started, e.clone());
                return answer(reply, Reply::failed(e));
            }
        };
        self.notifier.reloading();
        self.generation += 1;
        info!("reloading: generation {}, {} workers", self.generation, config.server.workers);
        self.hub.reconfigure(&config);
        self.config = config;
        self.config_text = text;

        let mut steps = VecDeque::new();
        for slot in 0..self.slots.len() {
            steps.push_back(Step::Roll { slot, old: self.slots[slot].worker });
        }
        for (index, old) in std::mem::take(&mut self.removed_workers).into_iter().enumerate() {
            steps.push_back(Step::Retire { old, target: index % self.slots.len() });
        }
        self.reload =
            Some(RollingReload { reply, steps, current: None, retired_listeners, started });
        self.advance_reload();
    }

    /// Matches the slots and their listeners to the new config: kept addresses keep their
    /// sockets, new addresses and new slots get new ones. Returns the sockets to close at the
    /// end. On error nothing has changed.
    fn rebind(&mut self, config: &Config) -> Result<Vec<Socket>, String> {
        let count = config.server.workers;
        let old_count = self.slots.len();
        let mut groups: Vec<(SocketAddr, SocketAddr, Vec<Option<Socket>>)> = Vec::new();
        for &wanted in &config.server.listen {
            let existing = self.listen_config.iter().position(|a| *a == wanted);
            let (bound, mut sockets) = match existing {
                Some(i) => {
                    let bound = self.listen[i];
                    (bound, (0..old_count).map(|_| None).collect::<Vec<Option<Socket>>>())
                }
                None => {
                    let group =
                        listener::bind_group(wanted, count, config.server.backlog, &self.listen)
                            .map_err(|e| format!("cannot listen on {wanted}: {e}"))?;
                    let bound = listener::local_addr(&group[0]).map_err(|e| e.to_string())?;
                    (bound, group.into_iter().map(Some).collect())
                }
            };
            if existing.is_some() {
                for _ in old_count..count {
                    let socket = listener::bind(bound, config.server.backlog)
                        .map_err(|e| format!("cannot listen on {bound}: {e}"))?;
                    sockets.push(Some(socket));
                }
            }
            groups.push((wanted, bound, sockets));
        }
        // Everything needed is bound; now rearrange (nothing below can fail).
        let mut old_sockets: Vec<Vec<Option<Socket>>> = self
            .slots
            .iter_mut()
            .map(|s| std::mem::take(&mut s.listeners).into_iter().map(Some).collect())
            .collect();
        let mut new_listeners: Vec<Vec<Socket>> = (0..count).map(|_| Vec::new()).collect();
        for (wanted, _, sockets) in &mut groups {
            let existing = self.listen_config.iter().position(|a| a == wanted);
            for (slot, listeners) in new_listeners.iter_mut().enumerate() {
                let socket = match existing {
                    Some(i) if slot < old_count => old_sockets[slot][i].take(),
                    _ => sockets.get_mut(slot).and_then(Option::take),
                };
                if let Some(socket) = socket {
                    listeners.push(socket);
                }
            }
        }
        let retired: Vec<Socket> = old_sockets.into_iter().flatten().flatten().collect();
        self.removed_workers = self.slots.iter().skip(count).filter_map(|s| s.worker).collect();
        self.slots.truncate(count);
        for (slot, listeners) in new_listeners.into_iter().enumerate() {
            match self.slots.get_mut(slot) {
                Some(s) => s.listeners = listeners,
                None => self.slots.push(Slot::new(listeners)),
            }
        }
        self.listen_config = groups.iter().map(|(wanted, _, _)| *wanted).collect();
        self.listen = groups.iter().map(|(_, bound, _)| *bound).collect();
        Ok(retired)
    }

    /// Moves the reload forward as far as it can go now.
    pub(super) fn advance_reload(&mut self) {
        loop {
            let Some(mut reload) = self.reload.take() else { return };
            if reload.current.is_none() {
                match reload.steps.pop_front() {
                    Some(step) => {
                        if let Step::Roll { slot, .. } = step {
                            if let Err(e) = self.start_worker(slot) {
                                error!("{e}");
                                self.schedule_restart(slot);
                            }
                        }
                        reload.current = Some((step, Progress::Starting));
                    }
                    None => return self.finish_reload(reload),
                }
            }
            let done = match reload.current.as_mut() {
                Some((step, progress)) => self.advance_step(step, progress),
                None => false,
            };
            if done {
                reload.current = None;
                self.reload = Some(reload);
                continue;
            }
            self.reload = Some(reload);
            return;
        }
    }

    /// Returns true when the step is finished.
    fn advance_step(&mut self, step: &Step, progress: &mut Progress) -> bool {
        let (old, target) = match *step {
            Step::Roll { slot, old } => (old, slot),
            Step::Retire { old, target } => (Some(old), target),
        };
        let old = old.filter(|id| self.workers.get(id).is_some_and(|w| w.bus_open()));
        match progress {
            Progress::Starting => {
                let Some(new) = self.slots.get(target).and_then(|s| s.worker) else { return false };
                let Some(new_worker) = self.workers.get_mut(&new).filter(|w| w.accepting()) else {
                    return false;
                };
                let Some(old) = old else { return true };
                // From here the old worker stops accepting: the new one is the slot's only
                // server, and is replaced at once should it die.
                new_worker.took_over = true;
                let new_version = new_worker.handoff_version;
                let old_version = self.workers.get(&old).map(|w| w.handoff_version);
                if self.config.reload.handoff && old_version == Some(new_version) {
                    match UnixStream::pair() {
                        Ok((a, b)) => {
                            self.send_fd(old, WorkerOrder::HandOff, a.into());
                            self.send_fd(new, WorkerOrder::Receive, b.into());
                            if let Some(w) = self.workers.get_mut(&old) {
                                w.state = Lifecycle::HandingOff { done: false };
                            }
                            *progress = Progress::HandingOff { to: new };
                            return false;
                        }
                        Err(e) => error!("cannot create a hand-off channel: {e}; draining"),
                    }
                } else if self.config.reload.handoff {
                    warn!("hand-off versions differ ({old_version:?} vs {new_version}); draining");
                }
                let timeout_ms = self.config.reload.drain_timeout.as_millis() as u64;
                if let Some(w) = self.workers.get_mut(&old) {
                    w.retire(WorkerOrder::Drain { timeout_ms });
                }
                true
            }
            Progress::HandingOff { to } => {
                let Some(old) = old else { return true };
                let receiver_alive = self.workers.get(to).is_some_and(|w| w.bus_open());
                let Some(worker) = self.workers.get_mut(&old) else { return true };
                if worker.state == Lifecycle::Draining {
                    // It could not take the hand-off: as in a drain, the step is over.
                    return true;
                }
                let done = worker.state == Lifecycle::HandingOff { done: true };
                if receiver_alive && (!done || self.hub.online_on(old) > 0) {
                    return false;
                }
                worker.retire(WorkerOrder::Exit);
                if !receiver_alive {
                    // The new worker died with sessions in transit: their sockets went with it.
                    // The slot restarts as after any crash; the room sees those clients leave.
                    error!("the new worker died during the hand-off; its sessions are lost");
                    self.hub.worker_lost(old, &mut Mailboxes(&mut self.workers));
                }
                true
            }
        }
    }

    fn send_fd(&mut self, id: WorkerId, order: WorkerOrder, fd: OwnedFd) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.conn.send_with_fds(&ToWorker::Control(order), vec![fd]);
        }
    }

    fn finish_reload(&mut self, reload: RollingReload) {
        drop(reload.retired_listeners);
        let elapsed = reload.started.elapsed();
        info!("reload to generation {} done in {:.3}s", self.generation, elapsed.as_secs_f64());
        for addr in &self.listen {
            info!("listening on {addr} with {} workers", self.slots.len());
        }
        self.last_reload =
            Some(ReloadOutcome { ok: true, error: None, duration_s: elapsed.as_secs_f64() });
        let status = self.status_line();
        self.notifier.ready(&status);
        if let Some(tx) = reload.reply {
            let _ = tx.send(Reply::done(format!(
                "reloaded: generation {}, {} workers",
                self.generation,
                self.slots.len()
            )));
        }
    }

    /// Records a failed reload and shows it in `STATUS=` at once.
    fn reload_failed(&mut self, started: Instant, error: String) {
        let duration_s = started.elapsed().as_secs_f64();
        self.last_reload = Some(ReloadOutcome { ok: false, error: Some(error), duration_s });
        self.update_status();
    }
}
