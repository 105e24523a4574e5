//! The supervisor's entries in systemd's file descriptor store (`crate::store`): the room —
//! numbering, history, recent events, counters, bans — in a pair of memory files, rewritten
//! before the events that changed it go out to the workers, and read back by the supervisor
//! systemd starts after a crash.
//!
//! Members are not restored: a member is a live session, and a session survives only in the
//! worker that serves it.

use super::hub::Hub;
use super::upgrade::state::{Header, SavedHub};
use crate::store::{self, snapshot::Snapshot};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};

/// The store entries' name.
const NAME: &str = "hub";
/// What the record starts with.
const FORMAT: &str = "chatd-hub-state";
/// 1: the first layout.
const VERSION: u32 = 1;
/// Recent events kept for replay (the hub keeps more; a restart replays nothing yet).
const EVENTS: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    header: Header,
    hub: SavedHub,
}

/// The room as stored: where it is written and the sequence number written last.
pub(super) struct StoredRoom {
    snapshot: Snapshot,
    seq: Option<u64>,
}

/// The room the previous supervisor left in the store, if it left one this binary can read.
/// Every entry passed is consumed: what is not read is dropped from the store.
pub(super) fn take_room(passed: Vec<(String, OwnedFd)>) -> Option<SavedHub> {
    let (hub, other): (Vec<_>, Vec<_>) = passed.into_iter().partition(|(name, _)| name == NAME);
    for (name, _) in &other {
        warn!("fd store: dropping an unknown entry {name:?}");
        store::remove(name);
    }
    let files: Vec<OwnedFd> = hub.into_iter().map(|(_, fd)| fd).collect();
    if files.is_empty() {
        return None;
    }
    let Some(bytes) = store::snapshot::read_newest(&files) else {
        warn!("fd store: no intact room state; the room starts empty");
        return None;
    };
    let header: Header = serde_json::from_slice(&bytes).ok()?;
    if header.format != FORMAT || header.version > VERSION {
        warn!("fd store: a room state of version {} is not readable here", header.version);
        return None;
    }
    match serde_json::from_slice::<Record>(&bytes) {
        Ok(record) => {
            let mut hub = record.hub;
            info!("the server restarted: the room goes on from event {}", hub.seq);
            hub.members.clear();
            Some(hub)
        }
        Err(e) => {
            warn!("fd store: unreadable room state: {e}");
            None
        }
    }
}

/// The record of `saved`, without members and with the newest events only.
fn encode(mut saved: SavedHub) -> Vec<u8> {
    saved.members.clear();
    let skip = saved.events.len().saturating_sub(EVENTS);
    saved.events.drain(..skip);
    let record = Record {
        header: Header {
            format: FORMAT.to_string(),
            version: VERSION,
            release: crate::version::VERSION.to_string(),
        },
        hub: saved,
    };
    // Plain data with string keys: serializing it cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

impl StoredRoom {
    /// New memory files in the store, replacing whatever was stored under the same name.
    /// `None` outside systemd, or if the store refuses them.
    pub(super) fn open() -> Option<StoredRoom> {
        if !store::available() {
            return None;
        }
        store::remove(NAME);
        let snapshot = match Snapshot::create(NAME) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                warn!("fd store: cannot create the room's memory files: {e}");
                return None;
            }
        };
        for file in snapshot.files() {
            if let Err(e) = store::store(NAME, file.as_fd()) {
                warn!("fd store: cannot store the room: {e}; a crash will lose it");
                return None;
            }
        }
        Some(StoredRoom { snapshot, seq: None })
    }

    /// Writes the room down if it changed since the last write.
    pub(super) fn save(&mut self, hub: &Hub) {
        if self.seq == Some(hub.seq()) {
            return;
        }
        match self.snapshot.write(&encode(hub.save())) {
            Ok(()) => self.seq = Some(hub.seq()),
            Err(e) => warn!("fd store: writing the room: {e}"),
        }
    }

    /// A stop asked for: the next start begins with an empty room.
    pub(super) fn clear(self) {
        store::remove(NAME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn passed(payloads: &[&[u8]]) -> Vec<(String, OwnedFd)> {
        let mut snapshot = Snapshot::create("test").unwrap();
        for p in payloads {
            snapshot.write(p).unwrap();
        }
        snapshot.files().iter().map(|f| (NAME.to_string(), f.try_clone().unwrap().into())).collect()
    }

    #[test]
    fn the_room_comes_back_without_its_members() {
        let mut saved = Hub::new(&Config::default()).save();
        saved.seq = 42;
        saved.next_guest = 7;
        saved.history = vec!["12:00 <alice> hello".into()];
        let back = take_room(passed(&[&encode(saved)])).expect("a room");
        assert_eq!((back.seq, back.next_guest), (42, 7));
        assert_eq!(back.history, vec!["12:00 <alice> hello".to_string()]);
        assert!(back.members.is_empty());
    }

    #[test]
    fn a_newer_format_or_garbage_starts_an_empty_room() {
        let saved = Hub::new(&Config::default()).save();
        let newer = String::from_utf8(encode(saved))
            .unwrap()
            .replace(&format!("\"version\":{VERSION}"), "\"version\":99");
        assert!(take_room(passed(&[newer.as_bytes()])).is_none());
        assert!(take_room(passed(&[b"not json"])).is_none());
        assert!(take_room(passed(&[])).is_none());
        assert!(take_room(Vec::new()).is_none());
    }
}
