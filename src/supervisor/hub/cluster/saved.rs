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
            // Told by this supervisor, or by a crashed one, and not yet told it is back.
            noticed: mode.noticed || mode.told_unreachable,
            generation: mode.generation,
            learnt: mode.learnt,
        };
        postcard::to_stdvec(&saved).ok()
    }

    /// The door's events not yet known to be stored ([`Cluster::unstored`]), for the stored
    /// room: a crash must not lose what the room was waiting to get back.
    pub fn save_cluster_unstored(&self) -> Option<Vec<u8>> {
        postcard::to_stdvec(self.cluster.as_ref()?.door.unstored()).ok()
    }

    /// Back in cluster mode from [`Hub::save_cluster`]'s bytes: after an exec, as the previous
    /// image left it; after a crash of the supervisor (`crash`: the bytes of
    /// [`Hub::save_cluster_unstored`] stored with them), from the snapshot it stored last
    /// (`supervisor/stored.rs`), reading the stream on from there, the joins then waiting
    /// having died with their connections.
    pub fn resume_cluster(
        &mut self,
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        bytes: &[u8],
        crash: Option<&[u8]>,
    ) -> Result<(), String> {
        let saved: SavedMode = postcard::from_bytes(bytes)
            .map_err(|e| format!("cluster: unreadable saved state: {e}"))?;
        let crashed = crash.is_some();
        let door = match crash {
            Some(unstored) => {
                let unstored = postcard::from_bytes(unstored).unwrap_or_else(|e| {
                    log::warn!(
                        "cluster: the stored events not yet in the stream are unreadable: {e}"
                    );
                    Vec::new()
                });
                Cluster::resume_after_crash(config, history, waker, saved.door, unstored)
            }
            None => Cluster::resume(config, history, waker, saved.door),
        };
        let door = door.map_err(|e| format!("cluster: cannot start the NATS bridge: {e}"))?;
        let pending = saved.pending.into_iter().map(|(s, w, c)| (s, (WorkerId(w), c)));
        self.cluster = Some(Box::new(ClusterMode {
            door,
            pending: if crashed { HashMap::new() } else { pending.collect() },
            noticed: saved.noticed && !crashed,
            told_unreachable: saved.noticed && crashed,
            generation: saved.generation,
            learnt: saved.learnt,
            resuming: crashed,
        }));
        Ok(())
    }
}
