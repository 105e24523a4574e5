//! The supervisor's side of cluster mode (SPEC §11): starting the door with the hub, running
//! it on every turn of the event loop, stopping it cleanly, and what `status` shows of it. The
//! room logic itself is the hub's (`hub/cluster.rs`).

use super::Supervisor;
use super::stored::StoredCluster;
use super::workers::Mailboxes;
use crate::cluster::Cluster;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an exec waits for this host's events to be stored.
const CLUSTER_SETTLE: Duration = Duration::from_secs(5);

impl Supervisor {
    /// With `[cluster] enabled`, starts the door (at once, even while NATS is unreachable) and
    /// puts the hub in cluster mode. The bridge wakes the loop through the shared waker.
    /// `stored`: what a supervisor that crashed stored of it (`supervisor/stored.rs`), to go on
    /// as the same host.
    pub(super) fn start_cluster(&mut self, stored: Option<StoredCluster>) -> Result<(), String> {
        if !self.config.cluster.enabled {
            return Ok(());
        }
        let cluster = &self.config.cluster;
        if let Some(stored) = stored {
            let history = self.config.chat.history;
            let (waker, unstored) = (self.waker.clone(), Some(stored.unstored.as_slice()));
            self.hub.resume_cluster(cluster, history, waker, &stored.mode, unstored)?;
            log::info!(
                "cluster: room {} as node {}, going on after a crash from the stored snapshot",
                cluster.room,
                cluster.node
            );
            return Ok(());
        }
        let door = Cluster::start(cluster, self.config.chat.history, self.waker.clone())
            .map_err(|e| format!("cluster: cannot start the NATS bridge: {e}"))?;
        log::info!(
            "cluster: room {} as node {} through {}",
            cluster.room,
            cluster.node,
            cluster.nats.join(", ")
        );
        self.hub.attach_cluster(door);
        Ok(())
    }

    /// Whether a reload may re-execute the supervisor from a changed binary. In cluster mode
    /// only while the room is reachable: the new image must find every event of this host
    /// stored. Otherwise the reload goes on with this image (the new workers run the new
    /// binary) and the supervisor's own upgrade waits for the next reload.
    pub(super) fn may_reexec(&self) -> bool {
        if self.hub.cluster().is_some_and(|door| !door.connected()) {
            log::warn!(
                "cluster: the binary changed, but the room is unreachable; the supervisor \
                 re-executes at a reload once it is back"
            );
            return false;
        }
        true
    }

    /// Before an exec in cluster mode: waits (at most [`CLUSTER_SETTLE`]) until every event
    /// this host handed to the bridge is stored, applying what the stream brings meanwhile, so
    /// the new image starts with nothing in flight.
    pub(super) fn settle_cluster(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_SETTLE;
        loop {
            self.poll_cluster();
            self.flush_buses();
            match self.hub.cluster() {
                None => return Ok(()),
                Some(door) if door.held() == 0 && door.connected() => return Ok(()),
                Some(door) if Instant::now() >= deadline => {
                    return Err(format!(
                        "cluster: {} events of this host not yet stored in the stream",
                        door.held()
                    ));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// After an exec: cluster mode as the previous image left it, or started afresh when it
    /// left none.
    pub(super) fn resume_cluster(&mut self, saved: Option<Vec<u8>>) -> Result<(), String> {
        let Some(bytes) = saved.filter(|_| self.config.cluster.enabled) else {
            return self.start_cluster(None);
        };
        let cluster = &self.config.cluster;
        let history = self.config.chat.history;
        self.hub.resume_cluster(cluster, history, self.waker.clone(), &bytes, None)?;
        log::info!(
            "cluster: room {} as node {}, carried across the exec",
            cluster.room,
            cluster.node
        );
        Ok(())
    }

    /// Applies what the stream brought; every turn of the loop, so on every wake of the
    /// bridge's waker and every tick.
    pub(super) fn poll_cluster(&mut self) {
        self.hub.poll_cluster(&mut Mailboxes(&mut self.workers));
    }

    /// `; cluster: connected` or `; cluster: unreachable since Ns` for `STATUS=`.
    pub(super) fn cluster_status_line(&self) -> Option<String> {
        let door = self.hub.cluster()?;
        Some(match door.unreachable_since() {
            None => "; cluster: connected".to_owned(),
            Some(since) => format!("; cluster: unreachable since {}s", since.elapsed().as_secs()),
        })
    }

    /// The `cluster` object of `status --json` (docs/control.md).
    pub(super) fn cluster_status(&self) -> Option<serde_json::Value> {
        let door = self.hub.cluster()?;
        let room = door.room();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let nodes: Vec<_> = room
            .hosts()
            .map(|(node, host)| {
                json!({
                    "node": node,
                    "clients": room.online_on(node),
                    "last_seen_s": (now_ms - host.last_time_ms).max(0) / 1000,
                })
            })
            .collect();
        Some(json!({
            "room": self.config.cluster.room,
            "node": door.node(),
            "connected": door.connected(),
            "unreachable_s": door.unreachable_since().map(|t| t.elapsed().as_secs()),
            "last_seq": room.last_seq(),
            "checkpoint_seq": door.checkpoint_seq(),
            "held": door.held(),
            "online": room.online(),
            "nodes": nodes,
        }))
    }
}
