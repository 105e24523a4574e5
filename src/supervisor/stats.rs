//! The supervisor's side of the metrics (`crate::metrics`): what it counts itself (reloads,
//! worker restarts), the last report of every worker that is gone, the snapshot it hands to the
//! `/metrics` endpoint once a second, and the endpoint itself, which follows `[metrics] listen`
//! across reloads.

use super::Supervisor;
use super::upgrade::state::SavedMetrics;
use crate::bus::WorkerCounters;
use crate::config::Config;
use crate::metrics::{ClusterNumbers, Endpoint, Histogram, Snapshot};
use log::info;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

#[derive(Default)]
pub(super) struct Stats {
    endpoint: Option<Endpoint>,
    /// `[metrics] listen` as configured (a port 0 stays 0), to tell whether a reload changes it.
    listen: Option<SocketAddr>,
    /// What the workers that are gone counted: their last reports, added up when they are
    /// reaped, so that no total goes back when a worker exits or dies.
    retired: WorkerCounters,
    reloads_ok: u64,
    reloads_failed: u64,
    reload_durations: Histogram,
    worker_restarts: u64,
}

impl Stats {
    /// The counts and the endpoint's address, for an upgrade (`upgrade::state`).
    pub(super) fn save(&self) -> SavedMetrics {
        SavedMetrics {
            listen: self.listen,
            fd: self.endpoint.as_ref().map(|e| e.listener().as_raw_fd()),
            retired: self.retired,
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            reload_durations: self.reload_durations.clone(),
            worker_restarts: self.worker_restarts,
        }
    }

    /// The counts of `saved`; the endpoint is adopted once the rest is in place
    /// (`Supervisor::adopt_metrics`).
    pub(super) fn restore(saved: SavedMetrics) -> Stats {
        Stats {
            listen: saved.listen,
            endpoint: None,
            retired: saved.retired,
            reloads_ok: saved.reloads_ok,
            reloads_failed: saved.reloads_failed,
            reload_durations: saved.reload_durations,
            worker_restarts: saved.worker_restarts,
        }
    }

    /// A worker is gone for good: its last report joins the totals.
    pub(super) fn retire(&mut self, last: &WorkerCounters) {
        self.retired.add(last);
    }

    pub(super) fn worker_restarted(&mut self) {
        self.worker_restarts += 1;
    }

    pub(super) fn reload_done(&mut self, took: Duration) {
        self.reloads_ok += 1;
        self.reload_durations.observe(took);
    }

    pub(super) fn reload_failed(&mut self) {
        self.reloads_failed += 1;
    }
}

/// What a reload does to the endpoint; prepared before anything else changes, so an address
/// that cannot be bound fails the reload with nothing changed.
pub(super) enum MetricsChange {
    Keep,
    /// Serve here from now on (`None`: no more), stopping the endpoint there was.
    Replace(Option<SocketAddr>, Option<Endpoint>),
}

impl Supervisor {
    /// Starts the endpoint of `[metrics] listen`, if any, at start-up.
    pub(super) fn start_metrics(&mut self) -> Result<(), String> {
        let listen = self.config.metrics.listen;
        let change = self.bind_metrics(listen)?;
        self.apply_metrics(change);
        Ok(())
    }

    /// The endpoint `config` asks for, bound and serving already, or `Keep` if it is the one
    /// running.
    pub(super) fn prepare_metrics(&self, config: &Config) -> Result<MetricsChange, String> {
        let listen = config.metrics.listen;
        if listen == self.stats.listen {
            return Ok(MetricsChange::Keep);
        }
        self.bind_metrics(listen)
    }

    fn bind_metrics(&self, listen: Option<SocketAddr>) -> Result<MetricsChange, String> {
        let Some(addr) = listen else { return Ok(MetricsChange::Replace(None, None)) };
        let snapshot = self.snapshot();
        let endpoint =
            crate::signals::in_threads_blocked(&super::CAUGHT, || Endpoint::start(addr, snapshot))
                .map_err(|e| format!("cannot listen on {addr} (metrics): {e}"))?;
        Ok(MetricsChange::Replace(listen, Some(endpoint)))
    }

    pub(super) fn apply_metrics(&mut self, change: MetricsChange) {
        let MetricsChange::Replace(listen, endpoint) = change else { return };
        match &endpoint {
            Some(endpoint) => info!("serving metrics on http://{}/metrics", endpoint.local_addr()),
            None if self.stats.endpoint.is_some() => info!("metrics endpoint closed"),
            None => {}
        }
        self.stats.listen = listen;
        self.stats.endpoint = endpoint;
        self.publish_metrics();
    }

    /// Serves `/metrics` on a listener the image this one replaced was serving on, with the
    /// numbers as they are now from the first request on.
    pub(super) fn adopt_metrics(&mut self, listener: std::net::TcpListener) -> Result<(), String> {
        let snapshot = self.snapshot();
        let endpoint = crate::signals::in_threads_blocked(&super::CAUGHT, || {
            Endpoint::serve(listener, snapshot)
        })
        .map_err(|e| format!("metrics endpoint: {e}"))?;
        self.stats.endpoint = Some(endpoint);
        Ok(())
    }

    /// Hands the endpoint the numbers as they are now (once a second).
    pub(super) fn publish_metrics(&self) {
        if let Some(endpoint) = &self.stats.endpoint {
            endpoint.publish(self.snapshot());
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut clients: BTreeMap<usize, u64> = (0..self.slots.len()).map(|s| (s, 0)).collect();
        for (id, n) in self.hub.online_by_worker() {
            if let Some(worker) = self.workers.get(&id) {
                *clients.entry(worker.slot).or_default() += n as u64;
            }
        }
        let mut workers = self.stats.retired;
        for worker in self.workers.values() {
            workers.add(&worker.counters);
        }
        let stats = &self.stats;
        Snapshot {
            clients,
            clients_total: self.hub.online() as u64,
            workers,
            room: *self.hub.counters(),
            reloads_ok: stats.reloads_ok,
            reloads_failed: stats.reloads_failed,
            reload_durations: stats.reload_durations.clone(),
            worker_restarts: stats.worker_restarts,
            generation: self.generation,
            history_lines: self.hub.history_len() as u64,
            cluster: self.hub.cluster().map(|door| ClusterNumbers {
                connected: door.connected(),
                unreachable_seconds: door.unreachable_since().map_or(0, |t| t.elapsed().as_secs()),
                last_seq: door.room().last_seq(),
                checkpoint_seq: door.checkpoint_seq(),
                held: door.held(),
                hosts: door.room().hosts().count() as u64,
                members: door.room().online() as u64,
            }),
        }
    }
}
