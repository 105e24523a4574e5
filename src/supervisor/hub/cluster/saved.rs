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

    /// Back in cluster mode from [`Hub::save_cluster`]'s bytes: after an exec, as the previous
    /// image left it; after a crash of the supervisor (`crashed`), from the snapshot it stored
    /// last (`supervisor/stored.rs`), reading the stream on from there, the joins then waiting
    /// having died with their connections.
    pub fn resume_cluster(
        &mut self,
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        bytes: &[u8],
        crashed: bool,
    ) -> Result<(), String> {
        let saved: SavedMode = postcard::from_bytes(bytes)
            .map_err(|e| format!("cluster: unreadable saved state: {e}"))?;
        let door = if crashed {
            Cluster::resume_after_crash(config, history, waker, saved.door)
        } else {
            Cluster::resume(config, history, waker, saved.door)
        };
        let door = door.map_err(|e| format!("cluster: cannot start the NATS bridge: {e}"))?;
        let pending = saved.pending.into_iter().map(|(s, w, c)| (s, (WorkerId(w), c)));
        self.cluster = Some(Box::new(ClusterMode {
            door,
            pending: if crashed { HashMap::new() } else { pending.collect() },
            noticed: saved.noticed && !crashed,
            generation: saved.generation,
            learnt: saved.learnt,
            resuming: crashed,
        }));
        Ok(())
    }
}
