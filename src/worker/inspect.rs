//! `chatd who` asks every worker about its sessions: how long each has been idle and how much
//! output waits for it. Only the worker knows (the hub never sees a client's input timing or
//! its socket), so it answers with one list, split into frames of bounded size.

use super::Worker;
use crate::bus::message::{SessionLoad, split_by_size};
use crate::bus::{ToHub, WorkerReport};
use std::time::Instant;

/// Sessions per frame: each takes a few dozen bytes, so a frame stays far below the limit.
const SESSIONS_PER_FRAME: usize = 16 * 1024;

impl Worker {
    pub(super) fn inspect(&mut self, id: u64) {
        let now = Instant::now();
        let room_len = self.output.room_len();
        let sessions: Vec<SessionLoad> = self
            .sessions
            .iter()
            .filter_map(|(session, &key)| {
                let client = self.clients.get(key)?;
                let shared = client.room_from.map_or(0, |from| room_len.saturating_sub(from));
                Some(SessionLoad {
                    session: *session,
                    idle_ms: now.saturating_duration_since(client.last_line).as_millis() as u64,
                    queued: (client.backlog() + shared) as u64,
                    transport: client.transport.kind(),
                })
            })
            .collect();
        let mut runs = split_by_size(sessions, SESSIONS_PER_FRAME, |_| 1).into_iter().peekable();
        while let Some(sessions) = runs.next() {
            let last = runs.peek().is_none();
            self.bus.send(&ToHub::Control(WorkerReport::Sessions { id, sessions, last }));
        }
    }
}
