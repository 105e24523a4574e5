//! The supervisor's side of cluster mode (SPEC §11): starting the door with the hub, running
//! it on every turn of the event loop, stopping it cleanly, and what `status` shows of it. The
//! room logic itself is the hub's (`hub/cluster.rs`).

use super::Supervisor;
use super::workers::Mailboxes;
use crate::cluster::Cluster;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

impl Supervisor {
    /// With `[cluster] enabled`, starts the door (at once, even while NATS is unreachable) and
    /// puts the hub in cluster mode. The bridge wakes the loop through the shared waker.
    pub(super) fn start_cluster(&mut self) -> Result<(), String> {
        if !self.config.cluster.enabled {
            return Ok(());
        }
        let cluster = &self.config.cluster;
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

    /// Whether a reload may re-execute the supervisor from a changed binary. Not in cluster
    /// mode: the room state and the host's generation are not carried across the exec yet,
    /// so the reload goes on with this image (the new workers run the new binary) and the
    /// supervisor's own upgrade waits for the next restart (docs/cluster.md).
    pub(super) fn may_reexec(&self) -> bool {
        if self.hub.cluster().is_some() {
            log::warn!(
                "cluster: the binary changed, but the supervisor does not re-execute in cluster \
                 mode; restart chatd to upgrade it"
            );
            return false;
        }
        true
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
            "held": door.held(),
            "online": room.online(),
            "nodes": nodes,
        }))
    }
}
