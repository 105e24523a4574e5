//! The rolling reload (docs/control.md, "Reload"), as a small state machine driven by the
//! supervisor's loop.
//!
//! A reload validates the new config, then rolls the slots one at a time: start the new
//! generation's worker on the slot's existing listeners, wait until it accepts, then tell the
//! old worker to hand its sessions over (or to drain, when hand-off is off or the two binaries
//! speak different hand-off versions). A slot is done when the hub has seen every session of
//! the old worker adopted; then the old worker is told to exit.
//!
//! When a larger `workers` adds slots, every new worker is started (and must accept) before the
//! first old worker hands over, and each old worker is given one channel per new worker (up to
//! `handoff::MAX_CHANNELS`) and deals its sessions out over them, so each new worker ends with
//! its share. Slots removed by a smaller `workers` deal theirs out over the remaining slots'
//! new workers the same way. Listeners are never closed while a worker may still accept from
//! them, except those of removed slots and addresses, which go once the reload is over.

use super::workers::{Lifecycle, Mailboxes};
use super::{RunState, Slot, Supervisor, WorkerId, upgrade};
use crate::bus::{ToWorker, WorkerOrder, handoff};
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

/// One unit of work of a reload: give `slot` (if any) a new-generation worker, then move the
/// sessions of `old` (if any) to the new workers of `targets`, dealt out evenly.
struct Step {
    /// A slot of the new config; `None` for a removed slot's worker.
    slot: Option<usize>,
    old: Option<WorkerId>,
    /// Where `old`'s sessions go: `slot` and more when slots were added, the remaining slots
    /// for a removed one.
    targets: Vec<usize>,
}

impl Step {
    /// Where all of `old`'s sessions go when it cannot deal them out (its hand-off version is
    /// older than `handoff::SEVERAL_CHANNELS_SINCE`).
    fn home(&self) -> usize {
        self.slot.or(self.targets.first().copied()).unwrap_or(0)
    }

    /// The slots whose new workers must accept before `old` stops accepting.
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slot.into_iter().chain(self.targets.iter().copied())
    }
}

enum Progress {
    /// Waiting for the target slots' new workers to accept.
    Starting,
    /// Sessions are moving from the old worker to these.
    HandingOff { to: Vec<WorkerId> },
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
    /// Starts a reload (from `chatd reload` when `reply` is set, with `client` its connection;
    /// else from SIGHUP). When the binary changed on disk, the supervisor first re-executes
    /// itself (`upgrade`) and the new image carries on from [`Supervisor::apply_reload`].
    pub(super) fn reload(&mut self, reply: Option<Sender<Reply>>, client: Option<OwnedFd>) {
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
        if self.reload.is_some() || self.upgrade.is_some() {
            return answer(reply, Reply::failed("a reload is already in progress"));
        }
        let started = Instant::now();
        let text = crate::config::read_file(&self.config_path).map_err(|e| e.to_string());
        match text {
            Ok(text) if upgrade::binary_changed(&self.exe) && self.may_reexec() => {
                self.start_upgrade(reply, client, text, started)
            }
            text => self.apply_reload(reply, text, started),
        }
    }

    /// Applies the config `text` read at `started`: validated, new addresses bound, then the
    /// slots roll. On error nothing changes.
    pub(super) fn apply_reload(
        &mut self,
        reply: Option<Sender<Reply>>,
        text: Result<String, String>,
        started: Instant,
    ) {
        let answer = |reply: Option<Sender<Reply>>, r: Reply| {
            if let Some(tx) = reply {
                let _ = tx.send(r);
            }
        };
        let origin = self.config_path.display().to_string();
        let parsed = text.and_then(|text| {
            Config::parse(&text, &origin).map(|c| (c, text)).map_err(|e| e.to_string())
        });
        let old_count = self.slots.len();
        let prepared = parsed.and_then(|(config, text)| {
            // New handshakes will use the new pair (each new worker loads it): check it first.
            config.check_tls().map_err(|e| e.to_string())?;
            let metrics = self.prepare_metrics(&config)?;
            self.rebind(&config).map(|retired| (config, text, retired, metrics))
        });
        let (config, text, retired_listeners, metrics) = match prepared {
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
        self.apply_metrics(metrics);
        self.config = config;
        self.config_text = text;

        let steps = self.plan(old_count);
        self.reload =
            Some(RollingReload { reply, steps, current: None, retired_listeners, started });
        self.advance_reload();
    }

    /// The steps of a reload from `old_count` slots to the current ones. Each slot is rolled
    /// in turn. When slots are added, each old worker deals its sessions out over the new
    /// workers of every slot, so the added slots do not start empty; the workers of removed
    /// slots deal theirs out over the remaining ones. With the same number of slots, each old
    /// worker's sessions go to its own slot's successor.
    fn plan(&mut self, old_count: usize) -> VecDeque<Step> {
        let count = self.slots.len();
        let stretch = |i: usize, n: usize| stretch(i, n, count);
        let mut steps = VecDeque::new();
        for slot in 0..count {
            let old = self.slots[slot].worker;
            let targets = if count > old_count && slot < old_count {
                stretch(slot, old_count)
            } else {
                vec![slot]
            };
            steps.push_back(Step { slot: Some(slot), old, targets });
        }
        let removed = std::mem::take(&mut self.removed_workers);
        let n = removed.len();
        for (index, old) in removed.into_iter().enumerate() {
            steps.push_back(Step { slot: None, old: Some(old), targets: stretch(index, n) });
        }
        steps
    }

    /// Matches the slots and their listeners to the new config: kept addresses keep their
    /// sockets, new addresses and new slots get new ones. Returns the sockets to close at the
    /// end. On error nothing has changed.
    fn rebind(&mut self, config: &Config) -> Result<Vec<Socket>, String> {
        let count = config.server.workers;
        let old_count = self.slots.len();
        // An address is kept when it is configured again for the same kind of connections.
        let old_kinds = self.listener_kinds();
        let kept = |wanted: SocketAddr, kind| {
            self.listen_config.iter().zip(&old_kinds).position(|(a, k)| (*a, *k) == (wanted, kind))
        };
        // Per address: as configured, as bound, the index it had before, its sockets.
        type Group = (SocketAddr, SocketAddr, Option<usize>, Vec<Option<Socket>>);
        let mut groups: Vec<Group> = Vec::new();
        for (wanted, kind) in config.listeners() {
            let existing = kept(wanted, kind);
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
            groups.push((wanted, bound, existing, sockets));
        }
        // Everything needed is bound; now rearrange (nothing below can fail).
        let mut old_sockets: Vec<Vec<Option<Socket>>> = self
            .slots
            .iter_mut()
            .map(|s| std::mem::take(&mut s.listeners).into_iter().map(Some).collect())
            .collect();
        let mut new_listeners: Vec<Vec<Socket>> = (0..count).map(|_| Vec::new()).collect();
        for (_, _, existing, sockets) in &mut groups {
            let existing = *existing;
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
        self.listen_config = groups.iter().map(|(wanted, ..)| *wanted).collect();
        self.listen = groups.iter().map(|(_, bound, ..)| *bound).collect();
        Ok(retired)
    }

    /// Moves the reload forward as far as it can go now.
    pub(super) fn advance_reload(&mut self) {
        loop {
            let Some(mut reload) = self.reload.take() else { return };
            if reload.current.is_none() {
                match reload.steps.pop_front() {
                    Some(step) => {
                        for slot in step.slots() {
                            self.start_new_generation(slot);
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

    /// Starts the slot's new-generation worker, unless an earlier step did.
    fn start_new_generation(&mut self, slot: usize) {
        let Some(state) = self.slots.get(slot) else { return };
        let current = state.worker.and_then(|id| self.workers.get(&id)).map(|w| w.generation);
        if current == Some(self.generation) {
            return;
        }
        if let Err(e) = self.start_worker(slot) {
            error!("{e}");
            self.schedule_restart(slot);
        }
    }

    /// Returns true when the step is finished.
    fn advance_step(&mut self, step: &Step, progress: &mut Progress) -> bool {
        let old = step.old.filter(|id| self.workers.get(id).is_some_and(|w| w.bus_open()));
        match progress {
            Progress::Starting => {
                // Every new worker involved accepts before the old one stops: no slot is left
                // unserved, and every target can take sessions.
                let accepting = |slot: usize| {
                    let id = self.slots.get(slot).and_then(|s| s.worker);
                    id.filter(|id| self.workers.get(id).is_some_and(|w| w.accepting()))
                };
                if !step.slots().all(|slot| accepting(slot).is_some()) {
                    return false;
                }
                let Some(old) = old else { return true };
                let old_version = self.workers.get(&old).map_or(0, |w| w.handoff_version);
                let targets = if old_version >= handoff::SEVERAL_CHANNELS_SINCE {
                    step.targets.clone()
                } else {
                    vec![step.home()]
                };
                let new: Vec<WorkerId> = targets.into_iter().filter_map(accepting).collect();
                // From here the old worker stops accepting: the slot's new worker is its only
                // server, and is replaced at once should it die.
                let own = step.slot.and_then(|slot| self.slots[slot].worker);
                if let Some(w) = own.and_then(|id| self.workers.get_mut(&id)) {
                    w.took_over = true;
                }
                let versions: Vec<u32> = new
                    .iter()
                    .filter_map(|id| self.workers.get(id))
                    .map(|w| w.handoff_version)
                    .collect();
                if self.config.reload.handoff && versions.iter().all(|&v| v == old_version) {
                    match self.open_channels(old, &new) {
                        Ok(()) => {
                            *progress = Progress::HandingOff { to: new };
                            return false;
                        }
                        Err(e) => error!("cannot create a hand-off channel: {e}; draining"),
                    }
                } else if self.config.reload.handoff {
                    warn!("hand-off versions differ ({old_version} vs {versions:?}); draining");
                }
                let timeout_ms = self.config.reload.drain_timeout.as_millis() as u64;
                if let Some(w) = self.workers.get_mut(&old) {
                    w.retire(WorkerOrder::Drain { timeout_ms });
                }
                true
            }
            Progress::HandingOff { to } => {
                let Some(old) = old else { return true };
                let receivers_alive =
                    to.iter().all(|id| self.workers.get(id).is_some_and(|w| w.bus_open()));
                let Some(worker) = self.workers.get_mut(&old) else { return true };
                if worker.state == Lifecycle::Draining {
                    // It could not take the hand-off: as in a drain, the step is over.
                    return true;
                }
                let done = worker.state == Lifecycle::HandingOff { done: true };
                if receivers_alive && (!done || self.hub.online_on(old) > 0) {
                    return false;
                }
                worker.retire(WorkerOrder::Exit);
                if !receivers_alive {
                    // A new worker died with sessions in transit: their sockets went with it.
                    // Its slot restarts as after any crash; the room sees those clients leave,
                    // and so are those still on their way to the others (the old worker
                    // forwards their leave, so they are closed there).
                    error!("a new worker died during the hand-off; its sessions are lost");
                    self.hub.worker_lost(old, &mut Mailboxes(&mut self.workers));
                }
                true
            }
        }
    }

    /// One socketpair per new worker: one end of each goes to `old` with `HandOff`, the other
    /// to its new worker with `Receive`.
    fn open_channels(&mut self, old: WorkerId, new: &[WorkerId]) -> std::io::Result<()> {
        let mut pairs = Vec::with_capacity(new.len());
        for _ in new {
            pairs.push(UnixStream::pair()?);
        }
        let (ours, theirs): (Vec<UnixStream>, Vec<UnixStream>) = pairs.into_iter().unzip();
        self.send_fds(old, WorkerOrder::HandOff, ours.into_iter().map(OwnedFd::from).collect());
        for (&id, end) in new.iter().zip(theirs) {
            self.send_fds(id, WorkerOrder::Receive, vec![end.into()]);
        }
        if let Some(w) = self.workers.get_mut(&old) {
            w.state = Lifecycle::HandingOff { done: false };
        }
        Ok(())
    }

    pub(super) fn send_fds(&mut self, id: WorkerId, order: WorkerOrder, fds: Vec<OwnedFd>) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.conn.send_with_fds(&ToWorker::Control(order), fds);
        }
    }

    fn finish_reload(&mut self, reload: RollingReload) {
        drop(reload.retired_listeners);
        let elapsed = reload.started.elapsed();
        self.stats.reload_done(elapsed);
        info!("reload to generation {} done in {:.3}s", self.generation, elapsed.as_secs_f64());
        self.log_listening();
        self.store_listeners();
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
    pub(super) fn reload_failed(&mut self, started: Instant, error: String) {
        let duration_s = started.elapsed().as_secs_f64();
        self.stats.reload_failed();
        self.last_reload = Some(ReloadOutcome { ok: false, error: Some(error), duration_s });
        self.update_status();
    }
}

/// The slots the `i`th of `n` old workers deals its sessions over, with `count` slots: all of
/// them, or (past `handoff::MAX_CHANNELS`) a stretch from `i * count / n` on, the stretches
/// spread evenly around the slots.
fn stretch(i: usize, n: usize, count: usize) -> Vec<usize> {
    let from = i * count / n.max(1);
    (0..count.min(handoff::MAX_CHANNELS)).map(|k| (from + k) % count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_workers_deal_over_every_slot_they_can_reach() {
        assert_eq!(stretch(0, 2, 4), [0, 1, 2, 3]);
        assert_eq!(stretch(1, 2, 4), [2, 3, 0, 1]);
        assert_eq!(stretch(0, 1, 3), [0, 1, 2]);
        // More slots than channels: the stretches still cover every slot, each about as often.
        for (n, count) in [(2, 8), (3, 8), (2, 5), (1, 4), (5, 16)] {
            let mut covered = vec![0; count];
            for i in 0..n {
                let slots = stretch(i, n, count);
                assert_eq!(slots.len(), count.min(handoff::MAX_CHANNELS));
                for s in slots {
                    covered[s] += 1;
                }
            }
            let (least, most) = (covered.iter().min(), covered.iter().max());
            if n * handoff::MAX_CHANNELS >= count {
                assert!(least >= Some(&1), "{n} workers over {count} slots: {covered:?}");
            }
            assert!(most.zip(least).is_some_and(|(m, l)| m - l <= 1), "{covered:?}");
        }
    }
}
