//! The supervisor's entries in systemd's file descriptor store (`crate::store`): the room —
//! numbering, members, history, recent events, counters, bans — in a pair of memory files,
//! rewritten whenever it changed, before the events that changed it go out to the workers, and
//! read back by the supervisor systemd starts after a crash. So no worker is ever sent a room
//! event the store does not have: a session resumed after a crash gets what it missed from
//! there (`kept`). The slots' listening sockets are stored too. Members come back only with
//! their sessions (`kept`).

use super::Supervisor;
use super::hub::Hub;
use super::upgrade::state::{Header, SavedHub};
use crate::listener;
use crate::store::{self, snapshot::Snapshot};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use socket2::Socket;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The room's entries' name.
const NAME: &str = "hub";
/// The listening sockets' entries' name.
const LISTEN: &str = "listen";
/// What the record starts with.
const FORMAT: &str = "chatd-hub-state";
/// 1: the first layout.
const VERSION: u32 = 1;
/// Recent events kept for replay to the sessions resumed after a crash (the hub keeps more).
const EVENTS: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    header: Header,
    hub: SavedHub,
}

/// `/history` lines kept in the store at most: the newest.
const HISTORY: usize = 10_000;

/// The room as stored: where it is written and the sequence number written last.
pub(super) struct StoredRoom {
    snapshot: Snapshot,
    seq: Option<u64>,
}

/// What the previous supervisor left in the store: the room, if this binary can read it, and
/// the slots' listening sockets. An entry of another name is dropped from the store.
pub(super) fn take_passed() -> (Option<SavedHub>, Vec<Socket>, Vec<(String, OwnedFd)>) {
    let mut room = Vec::new();
    let mut listeners = Vec::new();
    let mut kept = Vec::new();
    for (name, fd) in store::take_passed() {
        match name.as_str() {
            NAME => room.push(fd),
            LISTEN => listeners.push(Socket::from(fd)),
            _ if super::kept::is_kept(&name) => kept.push((name, fd)),
            _ => {
                warn!("fd store: dropping an unknown entry {name:?}");
                store::remove(&name);
            }
        }
    }
    (take_room(room), listeners, kept)
}

/// The stored listeners with the address each is bound to.
pub(super) fn by_address(listeners: Vec<Socket>) -> Vec<(SocketAddr, Socket)> {
    listeners.into_iter().filter_map(|s| Some((listener::local_addr(&s).ok()?, s))).collect()
}

/// The group of `count` listeners on `addr` (any port if its port is 0) built on the stored
/// ones bound there, which are taken out of `stored`: extra ones are closed, missing ones bound
/// beside them. `None` if none is stored there.
pub(super) fn take_group(
    stored: &mut Vec<(SocketAddr, Socket)>,
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Option<io::Result<Vec<Socket>>> {
    let matches = |a: &SocketAddr| *a == addr || (addr.port() == 0 && a.ip() == addr.ip());
    let bound = stored.iter().map(|(a, _)| *a).find(matches)?;
    let (mine, rest): (Vec<_>, Vec<_>) =
        std::mem::take(stored).into_iter().partition(|(a, _)| *a == bound);
    *stored = rest;
    let mut group: Vec<Socket> = mine.into_iter().map(|(_, s)| s).take(count).collect();
    while group.len() < count {
        match listener::bind(bound, backlog) {
            Ok(socket) => group.push(socket),
            Err(e) => return Some(Err(e)),
        }
    }
    info!("listening again on {bound}, kept through the restart");
    Some(Ok(group))
}

impl Supervisor {
    /// Replaces the listeners in the store with the slots' current ones (at start and after a
    /// reload, which may have added or retired some).
    pub(super) fn store_listeners(&self) {
        let Some(stored) = &self.stored else { return };
        let fds: Vec<BorrowedFd<'_>> =
            self.slots.iter().flat_map(|s| s.listeners.iter().map(|l| l.as_fd())).collect();
        stored.store_listeners(&fds);
    }
}

/// The newest intact room among the stored memory `files`.
fn take_room(files: Vec<OwnedFd>) -> Option<SavedHub> {
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
            let hub = record.hub;
            info!("the server restarted: the room goes on from event {}", hub.seq);
            Some(hub)
        }
        Err(e) => {
            warn!("fd store: unreadable room state: {e}");
            None
        }
    }
}

/// The record of `saved`, with the newest events only.
fn encode(mut saved: SavedHub) -> Vec<u8> {
    let skip = saved.events.len().saturating_sub(EVENTS);
    saved.events.drain(..skip);
    let skip = saved.history.len().saturating_sub(HISTORY);
    saved.history.drain(..skip);
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
        let [a, b] = snapshot.files();
        if let Err(e) = store::store(NAME, &[a.as_fd(), b.as_fd()]) {
            warn!("fd store: cannot store the room: {e}; a crash will lose it");
            return None;
        }
        Some(StoredRoom { snapshot, seq: None })
    }

    /// Writes the room down if it changed since the last write: before the events that
    /// changed it go out, whatever the write costs (one write per turn of the event loop
    /// however many events the turn numbered).
    pub(super) fn save(&mut self, hub: &Hub) {
        if self.seq == Some(hub.seq()) {
            return;
        }
        match self.snapshot.write(&encode(hub.save())) {
            Ok(()) => self.seq = Some(hub.seq()),
            Err(e) => warn!("fd store: writing the room: {e}"),
        }
    }

    /// The slots' listening sockets, replacing those stored before: a restart after a crash
    /// listens on them, so connections queued meanwhile are served, not reset.
    pub(super) fn store_listeners(&self, listeners: &[BorrowedFd<'_>]) {
        store::remove(LISTEN);
        if let Err(e) = store::store(LISTEN, listeners) {
            warn!("fd store: cannot store the listeners: {e}");
        }
    }

    /// A stop asked for: the next start begins with an empty room and binds anew.
    pub(super) fn clear(self) {
        store::remove(NAME);
        store::remove(LISTEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn passed(payloads: &[&[u8]]) -> Vec<OwnedFd> {
        let mut snapshot = Snapshot::create("test").unwrap();
        for p in payloads {
            snapshot.write(p).unwrap();
        }
        snapshot.files().iter().map(|f| f.try_clone().unwrap().into()).collect()
    }

    #[test]
    fn the_room_comes_back_with_its_members() {
        let mut saved = Hub::new(&Config::default()).save();
        saved.seq = 42;
        saved.next_guest = 7;
        saved.history = vec!["12:00 <alice> hello".into()];
        let saved_members = saved.members.len();
        let back = take_room(passed(&[&encode(saved)])).expect("a room");
        assert_eq!((back.seq, back.next_guest), (42, 7));
        assert_eq!(back.history, vec!["12:00 <alice> hello".to_string()]);
        assert_eq!(back.members.len(), saved_members);
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
