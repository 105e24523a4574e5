//! Cluster mode across a re-execution of the supervisor (`supervisor/upgrade`) or a crash of
//! it (`supervisor/stored.rs`): the door's room and numbering (`Cluster::save`), and the hub's
//! joins still waiting for the stream, so the new supervisor goes on as the same host, without
//! leaving the room or reading it from the start.

use super::{ClusterMode, Hub, WorkerId};
use crate::bus::message::{ConnId, SessionId};
use crate::cluster::{Cluster, SavedCluster};
use crate::config;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Postcard inside the supervisor's JSON state (the room's maps have keys JSON cannot name).
#[derive(Serialize, Deserialize)]
struct SavedMode {
    door: SavedCluster,
    /// Local joins published and not yet applied: session, worker, connection.
    pending: Vec<(SessionId, usize, ConnId)>,
    noticed: bool,
    generation: u64,
    learnt: bool,
}

impl Hub {
    /// Cluster mode written down; `None` outside it.
    pub fn save_cluster(&self) -> Option<Vec<u8>> {
        let mode = self.cluster.as_ref()?;
        let saved = SavedMode {
            door: mode.door.save(),
            pending: mode.pending.iter().map(|(s, (w, c))| (*s, w.0, *c)).collect(),
            noticed: mode.noticed,
            generation: mode.generation,
            learnt: mode.learnt,
        };
        postcard::to_stdvec(&saved).ok()
    }

    /// Back in cluster mode after an exec, from [`Hub::save_cluster`]'s bytes.
    pub fn resume_cluster(
        &mut self,
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        bytes: &[u8],
    ) -> Result<(), String> {
        let saved = decode(bytes)?;
        let door = Cluster::resume(config, history, waker, saved.door)
            .map_err(|e| format!("cluster: cannot start the NATS bridge: {e}"))?;
        let pending = saved.pending.into_iter().map(|(s, w, c)| (s, (WorkerId(w), c))).collect();
        self.cluster = Some(Box::new(ClusterMode {
            door,
            pending,
            noticed: saved.noticed,
            generation: saved.generation,
            learnt: saved.learnt,
            resuming: false,
        }));
        Ok(())
    }

    /// Back in cluster mode after a crash of the supervisor, from the snapshot it stored last
    /// (`supervisor/stored.rs`): the same host and generation, reading the stream on from the
    /// snapshot. The joins then waiting died with their connections.
    pub fn resume_cluster_after_crash(
        &mut self,
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        bytes: &[u8],
    ) -> Result<(), String> {
        let saved = decode(bytes)?;
        let door = Cluster::resume_after_crash(config, history, waker, saved.door)
            .map_err(|e| format!("cluster: cannot start the NATS bridge: {e}"))?;
        self.cluster = Some(Box::new(ClusterMode {
            door,
            pending: HashMap::new(),
            noticed: false,
            generation: saved.generation,
            learnt: saved.learnt,
            resuming: true,
        }));
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<SavedMode, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("cluster: unreadable saved state: {e}"))
}
