//! The supervisor's entries in systemd's file descriptor store (`crate::store`): the room —
//! numbering, history, recent events, counters, bans — in a pair of memory files (a snapshot)
//! and a journal of what changed since, written when it changed, before the events that
//! changed it go out to the workers, and read back by the supervisor systemd starts after a
//! crash. A turn of the event loop appends what it changed; the whole room is written again
//! only when the journal has grown past [`JOURNAL_MAX`], bans changed or a burst of joins and
//! leaves outran the hub's memory of them, so keeping the store
//! current costs in proportion to the traffic, not to the history. The slots' listening
//! sockets are stored too.
//!
//! No worker is ever sent a room event the store does not have, so a session resumed after a
//! crash gets what it missed from there (`kept`). The members are in every snapshot, and a
//! journal entry carries those whose presence changed (a join, a leave, a nick) since the last
//! write; they come back only with their sessions (`kept`).

use super::Supervisor;
use super::hub::Hub;
use super::upgrade::state::{Header, SavedHub, SavedMember};
use crate::bus::message::SessionId;
use crate::config::Config;
use crate::listener;
use crate::store::{self, journal::Journal, snapshot::Snapshot};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use socket2::Socket;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

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
    /// In cluster mode: the door as it was when the hub was (docs/cluster.md, "Crash of the
    /// supervisor").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<StoredCluster>,
}

/// Cluster mode in a snapshot: whose it is, `Hub::save_cluster`'s bytes, and
/// `Hub::save_cluster_unstored`'s (none in a snapshot of an earlier release).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub(super) struct StoredCluster {
    pub node: String,
    pub room: String,
    pub mode: Vec<u8>,
    #[serde(default)]
    pub unstored: Vec<u8>,
}

/// A journal entry: what a turn changed (`hub.members`: the members that joined or changed
/// their nick), and the sessions that left.
#[derive(Serialize, Deserialize)]
struct Entry {
    hub: SavedHub,
    gone: Vec<SessionId>,
}

/// `/history` lines kept in the store at most: the newest.
const HISTORY: usize = 10_000;
/// Journal bytes after which the next write is a whole snapshot again.
const JOURNAL_MAX: u64 = 3 << 20;
/// In cluster mode, stream events applied between two snapshots at most, and the time between
/// two at least: the stream is the journal, read again after a crash from the snapshot on, so
/// this bounds that reading, at a cost of a snapshot per 2 s at most in a quiet room.
const CLUSTER_SNAPSHOT_EVENTS: u64 = 4096;
const CLUSTER_SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// The room as stored: where it is written, and what of the hub was written last (its sequence
/// number, history lines and ban edits), to tell what is new.
pub(super) struct StoredRoom {
    snapshot: Snapshot,
    journal: Journal,
    /// `None`: no snapshot yet, or a write failed; the next write is a snapshot.
    seq: Option<u64>,
    pushed: u64,
    bans: u64,
    presence: u64,
    /// In cluster mode: the node and room, and the stream sequence the last snapshot is at.
    cluster: Option<ClusterSnapshots>,
}

/// In cluster mode: whose snapshots, and where and when the last one was written, with what
/// of the door's events not yet stored (how many, the newest's number) and whether the
/// clients had been told the room is unreachable.
struct ClusterSnapshots {
    node: String,
    room: String,
    seq: u64,
    at: Instant,
    unstored: (usize, Option<u64>),
    noticed: bool,
}

/// What the previous supervisor left in the store: the room, if this binary can read it, and
/// the slots' listening sockets. An entry of another name is dropped from the store.
pub(super) fn take_passed() -> (Option<Passed>, Vec<Socket>, Vec<(String, OwnedFd)>) {
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

/// What of a passed room this configuration can go on with: the hub, and in cluster mode the
/// door's part. A room stored in cluster mode goes on only in cluster mode, as the same node
/// of the same room, and one stored on a single host only there.
pub(super) fn usable(
    passed: Option<Passed>,
    config: &Config,
) -> (Option<SavedHub>, Option<StoredCluster>) {
    let Some(Passed { hub, cluster }) = passed else { return (None, None) };
    let ours = config.cluster.enabled;
    match cluster {
        None if !ours => (Some(hub), None),
        Some(c) if ours && c.node == config.cluster.node && c.room == config.cluster.room => {
            (Some(hub), Some(c))
        }
        _ => {
            warn!("fd store: the stored room is of another cluster setting; the room starts anew");
            (None, None)
        }
    }
}

/// The node and room names in cluster mode, for [`StoredRoom::open`].
pub(super) fn cluster_names(config: &Config) -> Option<(String, String)> {
    let cluster = &config.cluster;
    cluster.enabled.then(|| (cluster.node.clone(), cluster.room.clone()))
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

/// The room a crashed supervisor stored: the hub, and in cluster mode the door.
pub(super) struct Passed {
    pub hub: SavedHub,
    pub cluster: Option<StoredCluster>,
}

/// The newest intact room among the stored memory `files`.
fn take_room(files: Vec<OwnedFd>) -> Option<Passed> {
    if files.is_empty() {
        return None;
    }
    let Some((version, bytes)) = store::snapshot::read_newest(&files) else {
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
            let mut members: BTreeMap<SessionId, SavedMember> =
                hub.members.drain(..).map(|m| (m.session, m)).collect();
            let mut applied = 0;
            if let Some((follows, entries)) = store::journal::read(&files) {
                for entry in entries.iter().filter(|_| follows == version) {
                    match postcard::from_bytes::<Entry>(entry) {
                        Ok(entry) => apply(&mut hub, &mut members, entry),
                        Err(e) => {
                            warn!("fd store: unreadable journal entry {applied}: {e}");
                            break;
                        }
                    }
                    applied += 1;
                }
            }
            hub.members = members.into_values().collect();
            info!(
                "the server restarted: the room goes on from event {} ({applied} journal entries)",
                hub.seq
            );
            Some(Passed { hub, cluster: record.cluster })
        }
        Err(e) => {
            warn!("fd store: unreadable room state: {e}");
            None
        }
    }
}

/// A journal entry applied to the room it follows (whose members are in `members`).
fn apply(hub: &mut SavedHub, members: &mut BTreeMap<SessionId, SavedMember>, entry: Entry) {
    let Entry { hub: delta, gone } = entry;
    for session in gone {
        members.remove(&session);
    }
    members.extend(delta.members.into_iter().map(|m| (m.session, m)));
    hub.seq = delta.seq;
    hub.next_session = delta.next_session;
    hub.next_guest = delta.next_guest;
    hub.counters = delta.counters;
    hub.bans_changed = delta.bans_changed;
    hub.events.extend(delta.events);
    hub.events.drain(..hub.events.len().saturating_sub(EVENTS));
    hub.history.extend(delta.history);
    hub.history.drain(..hub.history.len().saturating_sub(HISTORY));
}

/// The snapshot record of `saved` (and in cluster mode of the door).
fn encode(saved: SavedHub, cluster: Option<StoredCluster>) -> Vec<u8> {
    let record = Record {
        header: Header {
            format: FORMAT.to_string(),
            version: VERSION,
            release: crate::version::VERSION.to_string(),
        },
        hub: saved,
        cluster,
    };
    // Plain data with string keys: serializing it cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

impl StoredRoom {
    /// New memory files in the store, replacing whatever was stored under the same name.
    /// `None` outside systemd or if the store refuses them. `cluster`: the node and room in
    /// cluster mode.
    pub(super) fn open(cluster: Option<(String, String)>) -> Option<StoredRoom> {
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
        let journal = match Journal::create(NAME) {
            Ok(journal) => journal,
            Err(e) => {
                warn!("fd store: cannot create the room's journal: {e}");
                return None;
            }
        };
        let [a, b] = snapshot.files();
        if let Err(e) = store::store(NAME, &[a.as_fd(), b.as_fd(), journal.file().as_fd()]) {
            warn!("fd store: cannot store the room: {e}; a crash will lose it");
            return None;
        }
        let at = Instant::now();
        let cluster = cluster.map(|(node, room)| ClusterSnapshots {
            node,
            room,
            seq: 0,
            at,
            unstored: (0, None),
            noticed: false,
        });
        Some(StoredRoom { snapshot, journal, seq: None, pushed: 0, bans: 0, presence: 0, cluster })
    }

    /// In cluster mode: a snapshot of the hub and the door after [`CLUSTER_SNAPSHOT_EVENTS`]
    /// applied stream events, or after [`CLUSTER_SNAPSHOT_EVERY`] if any, and nothing in
    /// between, since the stream keeps those events. What the stream does not keep yet — this
    /// host's events NATS has not acknowledged, such as lines typed while it is unreachable —
    /// and the outage notice count as changes too, so a crash during an outage loses at most
    /// the last [`CLUSTER_SNAPSHOT_EVERY`] of them.
    fn save_cluster(&mut self, hub: &Hub) {
        let (Some(last), Some(door)) = (self.cluster.as_mut(), hub.cluster()) else { return };
        let seq = door.room().last_seq();
        let unstored = (door.unstored().len(), door.unstored().back().map(|(n, _)| *n));
        let noticed = hub.cluster_noticed();
        let changed = seq > last.seq || unstored != last.unstored || noticed != last.noticed;
        let due = seq >= last.seq + CLUSTER_SNAPSHOT_EVENTS
            || (changed && last.at.elapsed() >= CLUSTER_SNAPSHOT_EVERY);
        if self.seq.is_some() && !due {
            return;
        }
        let (Some(mode), Some(unstored_bytes)) = (hub.save_cluster(), hub.save_cluster_unstored())
        else {
            return;
        };
        let cluster = StoredCluster {
            node: last.node.clone(),
            room: last.room.clone(),
            mode,
            unstored: unstored_bytes,
        };
        let record = encode(hub.save_recent(EVENTS, HISTORY), Some(cluster));
        match self
            .snapshot
            .write(&record)
            .and_then(|()| self.journal.restart(self.snapshot.version()))
        {
            Ok(()) => {
                (last.seq, last.at, last.unstored, last.noticed) =
                    (seq, Instant::now(), unstored, noticed);
                self.seq = Some(hub.seq());
                if door.unreachable_since().is_some() && unstored.0 > 0 {
                    info!(
                        "cluster: the stored room keeps {} events NATS has not stored yet",
                        unstored.0
                    );
                }
            }
            Err(e) => {
                warn!("fd store: writing the room: {e}");
                self.seq = None;
            }
        }
    }

    /// Writes down what changed in the room since the last write: a journal entry, or the whole
    /// room when there is no snapshot yet, the journal is long, bans changed or more members
    /// came and went than the hub remembers.
    pub(super) fn save(&mut self, hub: &Hub) {
        if self.cluster.is_some() {
            return self.save_cluster(hub);
        }
        let bans = self.bans == hub.bans_edits();
        if self.seq == Some(hub.seq()) && bans && self.presence == hub.presence_edits() {
            return;
        }
        let changed = hub.presence_since(self.presence);
        let appended = match (self.seq, changed) {
            (Some(seq), Some((here, gone))) if bans && self.journal.bytes() < JOURNAL_MAX => {
                let mut delta = hub.save_since(seq, self.pushed);
                delta.members = here;
                postcard::to_stdvec(&Entry { hub: delta, gone })
                    .map_err(io::Error::other)
                    .and_then(|entry| self.journal.append(&entry))
                    .is_ok()
            }
            _ => false,
        };
        // Whatever the journal could not take, a snapshot does, before anything goes out.
        let written = if appended {
            Ok(())
        } else {
            self.snapshot
                .write(&encode(hub.save_recent(EVENTS, HISTORY), None))
                .and_then(|()| self.journal.restart(self.snapshot.version()))
        };
        match written {
            Ok(()) => {
                self.seq = Some(hub.seq());
                self.pushed = hub.history_pushed();
                self.bans = hub.bans_edits();
                self.presence = hub.presence_edits();
            }
            Err(e) => {
                warn!("fd store: writing the room: {e}");
                self.seq = None;
            }
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
mod tests;
