//! One room across several hosts over NATS JetStream (SPEC §11, docs/cluster.md).
//!
//! The door is [`Cluster`], all the hub calls (`supervisor/hub/cluster.rs`):
//!
//! ```text
//! let cluster = Cluster::start(&config.cluster, config.chat.history, waker)?; // at start
//! cluster.publish(Event::Say { session, text });   // what a local client did, instead of
//!                                                  // numbering it itself
//! cluster.send_private(&member.node, private);     // /msg to a member of another host
//! for output in cluster.poll(Instant::now()) {     // when the waker fires, and every tick
//!     match output {
//!         Output::Applied(applied) => …,  // a room change in stream order: render, number
//!                                         // with applied.seq, send to the workers
//!         Output::Outage(step) => …,      // tell this host's clients (SPEC §11)
//!         Output::Private(private) => …,  // a /msg for one of this host's sessions
//!         Output::Restored { history } => …, // started from a checkpoint: room() is whole
//!         Output::Resumed => …,               // after a crash: the stream is read to its end
//!     }
//! }
//! if cluster.checkpoint_due() {                     // after handling a poll's outputs
//!     cluster.checkpoint(history_lines);
//! }
//! cluster.room();                                   // who is where, for /who, /msg, status
//! cluster.stop();                                   // clean stop: HostDown, flush
//! ```
//!
//! Inside: [`events`] (what travels), [`room`] (the state machine every host applies in stream
//! order), [`outage`] (the rules while NATS is unreachable), [`checkpoint`] (the room written
//! down, for hosts that start after the stream dropped its first events), [`bridge`] (the
//! thread that talks to NATS). The door ties them: it numbers this host's events for de-duplication, beats into
//! the stream, declares silent hosts gone, publishes this host's roster when another host
//! starts, and turns the bridge's connection reports into outage steps.

pub mod bridge;
pub mod checkpoint;
pub mod events;
pub mod outage;
pub mod room;

use crate::config;
use bridge::{Bridge, Command, Report};
use events::{Envelope, Event, Private};
use outage::{Outage, Step};
use room::{Applied, Change, Room};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What [`Cluster::poll`] gives the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Applied(Applied),
    Outage(Step),
    Private(Private),
    /// Resumed after a crash ([`Cluster::resume_after_crash`]), the stream is read to its end:
    /// every change of it came before this.
    Resumed,
    /// Started from a checkpoint (`checkpoint.rs`), before any change: the room is already
    /// whole, with these history lines; its members came without joins.
    Restored {
        history: Vec<String>,
    },
}

/// A [`Cluster`] across a re-execution of the supervisor: the host stays the same member of
/// the room (its generation, the numbers of its events) and the room stays as applied.
#[derive(Serialize, Deserialize)]
pub struct SavedCluster {
    generation: u64,
    room: Room,
    published: u64,
    numbered: u64,
    declared: Vec<((String, u64), u64)>,
    hosts_seen: Vec<(String, u64)>,
}

/// This host's part in the cluster room.
pub struct Cluster {
    node: String,
    generation: u64,
    room: Room,
    outage: Outage,
    bridge: Bridge,
    connected: bool,
    readable: bool,
    /// Events handed to the bridge.
    published: u64,
    /// ... in this generation: their numbers (`Envelope::n`, and in their message ids).
    numbered: u64,
    /// ... of which stored.
    stored: u64,
    beat_every: Duration,
    host_timeout: Duration,
    last_sent: Option<Instant>,
    /// Declarations made and not yet seen applied, with the last sequence they name: the same
    /// one is not made twice, a later one is (the first was stale).
    declared: BTreeMap<(String, u64), u64>,
    /// Host generations seen, to publish the roster when a new one appears.
    hosts_seen: BTreeSet<(String, u64)>,
    /// Started after a crash of the supervisor from a stored snapshot: reading the stream on
    /// from there, and holding this host's events, unnumbered, until it has read all of it.
    resuming: Option<Vec<Event>>,
    /// Since when the room is reachable and this host's events are stored again: no host is
    /// declared gone before every host had `host_timeout` to beat after an outage (after one
    /// that cut off every host, the first events make the stream's clock jump past everyone's
    /// last beat). Counted from a stored event, not from the connection: a stream being read
    /// while it has no leader stores nobody's beats.
    reachable_since: Option<Instant>,
    /// The host generations whose last message said they read packed messages. Not saved
    /// across an exec or a crash: relearnt from their next messages, packing nothing until.
    reads_packed: BTreeMap<String, u64>,
    /// This generation's events handed to the bridge and not yet stored, oldest first, by
    /// number: what a crash of the supervisor would lose, so the stored room keeps them
    /// (`supervisor/stored.rs`) and the next supervisor sends them again.
    unstored: VecDeque<(u64, Event)>,
    /// After a crash: the crashed supervisor's [`Cluster::unstored`], sent again once the
    /// stream shows which of them it stored.
    unstored_before: VecDeque<(u64, Event)>,
    /// Stream messages between two checkpoints, once the stream's limit is known.
    checkpoint_every: Option<u64>,
    /// The sequence of the last checkpoint written or started from.
    checkpoint_seq: u64,
}

impl Cluster {
    /// Starts the bridge; returns at once, even while NATS is unreachable (the outage rules
    /// then run from now). `history` is `chat.history`, which sizes the stream.
    pub fn start(
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
    ) -> io::Result<Cluster> {
        let saved = SavedCluster {
            generation: new_generation(),
            room: Room::new(),
            published: 0,
            numbered: 0,
            declared: Vec::new(),
            hosts_seen: Vec::new(),
        };
        Cluster::resume(config, history, waker, saved)
    }

    /// Goes on where [`Cluster::save`] left off in the image before an exec: same generation,
    /// same room, reading the stream after the last event applied.
    pub fn resume(
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        saved: SavedCluster,
    ) -> io::Result<Cluster> {
        let settings = bridge::Settings {
            urls: config.nats.clone(),
            room: config.room.clone(),
            node: config.node.clone(),
            replicas: config.replicas,
            max_messages: bridge::max_messages(history),
        };
        let now = Instant::now();
        let from_seq = saved.room.last_seq() + 1;
        Ok(Cluster {
            node: config.node.clone(),
            generation: saved.generation,
            room: saved.room,
            outage: Outage::new(config.outage_notice, config.outage_timeout, now),
            bridge: Bridge::start(settings, from_seq, waker)?,
            connected: false,
            readable: false,
            published: saved.published,
            numbered: saved.numbered,
            stored: saved.published,
            beat_every: config.host_timeout / 5,
            host_timeout: config.host_timeout,
            last_sent: None,
            declared: saved.declared.into_iter().collect(),
            hosts_seen: saved.hosts_seen.into_iter().collect(),
            resuming: None,
            reachable_since: None,
            reads_packed: BTreeMap::new(),
            unstored: VecDeque::new(),
            unstored_before: VecDeque::new(),
            checkpoint_every: None,
            checkpoint_seq: 0,
        })
    }

    /// Goes on from a snapshot stored by a supervisor that then crashed (SPEC §8): the same
    /// generation and room, read on from the snapshot. Events handed to its bridge may or may
    /// not be in the stream, so this host's numbering is known only once the stream is read to
    /// its end; until then its events wait, and [`Output::Resumed`] says when. `unstored`: the
    /// crashed supervisor's events not known to be stored when it wrote the snapshot (lines
    /// typed while NATS was unreachable, mostly); those the stream lacks are sent again.
    pub fn resume_after_crash(
        config: &config::Cluster,
        history: usize,
        waker: Arc<mio::Waker>,
        saved: SavedCluster,
        unstored: Vec<(u64, Event)>,
    ) -> io::Result<Cluster> {
        let mut door = Cluster::resume(config, history, waker, saved)?;
        (door.published, door.stored) = (0, 0);
        door.resuming = Some(Vec::new());
        door.unstored_before = unstored.into();
        Ok(door)
    }

    /// The stream is read to its end: this host's events are numbered on from its last one
    /// there, the crashed supervisor's events the stream lacks are sent again, and the ones
    /// held meanwhile go out. If some of its events wait in the room for predecessors lost with
    /// the crash, those the stored snapshot kept fill the gap under their own numbers; if it
    /// did not keep them all, the generation cannot go on: this host goes on as a new one,
    /// which ends the old one everywhere (its clients reconnect).
    fn resumed(&mut self, out: &mut Vec<Output>) {
        let Some(held) = self.resuming.take() else { return };
        out.push(Output::Resumed);
        let before = std::mem::take(&mut self.unstored_before);
        let mut again = Vec::new();
        if let Some(numbering) = self.room.numbering(&self.node, self.generation) {
            // Not joins: the kept sessions are paired with the members the stream has, and a
            // join sent again now would make a member without a socket.
            let fills = |n: &u64, event: &Event| {
                numbering.missing.contains(n) && !matches!(event, Event::Join { .. })
            };
            let gap: Vec<(u64, Event)> =
                before.iter().filter(|(n, event)| fills(n, event)).cloned().collect();
            if gap.len() == numbering.missing.len() {
                if !gap.is_empty() {
                    log::warn!(
                        "cluster: {} events of this host before the crash were missing from \
                         the stream; sent again from the stored room",
                        gap.len()
                    );
                }
                for (n, event) in gap {
                    self.send(n, event);
                }
                self.numbered = numbering.highest;
                again = before
                    .into_iter()
                    .filter(|(n, event)| {
                        *n > numbering.highest && !matches!(event, Event::Join { .. })
                    })
                    .map(|(_, event)| event)
                    .collect();
            } else {
                // Its next event, of a new generation, ends this one in every room.
                log::error!(
                    "cluster: an event of this host before the crash is missing from the stream; \
                     going on as a new generation"
                );
                self.generation = new_generation();
                self.numbered = 0;
                self.unstored.clear();
            }
        }
        // No numbering: the generation is over (declared gone while this host was down), and
        // `apply` has started a new one already.
        log::info!(
            "cluster: read the stream to its end after the restart; {} events the crashed \
             supervisor had not seen stored sent again, {} held meanwhile",
            again.len(),
            held.len()
        );
        for event in again.into_iter().chain(held) {
            self.publish(event);
        }
    }

    /// What a re-executed supervisor needs to go on as the same host. Complete only once every
    /// event handed to the bridge is stored ([`Cluster::held`] is 0): the new image's bridge
    /// starts empty.
    pub fn save(&self) -> SavedCluster {
        SavedCluster {
            generation: self.generation,
            room: self.room.clone(),
            published: self.published,
            numbered: self.numbered,
            declared: self.declared.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            hosts_seen: self.hosts_seen.iter().cloned().collect(),
        }
    }

    /// Sends an event of this host into the stream. It is held, in order, while the room is
    /// unreachable, and stored once whatever the retries; its effect comes back from
    /// [`Cluster::poll`] in its place in the stream.
    pub fn publish(&mut self, event: Event) {
        if let Some(held) = self.resuming.as_mut() {
            held.push(event);
            return;
        }
        self.numbered += 1;
        self.send(self.numbered, event);
    }

    /// Hands the bridge this host's event numbered `n`.
    fn send(&mut self, n: u64, event: Event) {
        self.published += 1;
        let (node, generation) = (self.node.clone(), self.generation);
        let id = format!("{node}.{generation}.{n}");
        let packable =
            matches!(event, Event::Say { .. } | Event::Me { .. }) && self.all_read_packed();
        self.unstored.push_back((n, event.clone()));
        let envelope = Envelope { node, generation, n, event };
        let payload = events::encode(&envelope);
        self.bridge.send(Command::Publish { id, payload, packable });
        self.last_sent = Some(Instant::now());
    }

    /// A `/msg` for a member served by `node`.
    pub fn send_private(&self, node: &str, private: &Private) {
        let payload = events::encode(private);
        self.bridge.send(Command::Private { node: node.to_owned(), payload });
    }

    /// What happened since the last call; also runs the timers (beats, declarations, outage),
    /// so call it on every tick as well as when the waker fires.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let reports: Vec<Report> = self.bridge.reports().collect();
        for report in reports {
            match report {
                Report::Connected(up) => self.reachability(Some(up), None, now, &mut out),
                Report::Stream(up) => self.reachability(None, Some(up), now, &mut out),
                Report::Event { seq, time_ms, payloads, reads_packed } => {
                    let mut envelopes = Vec::with_capacity(payloads.len());
                    for payload in &payloads {
                        match events::decode_envelope(payload) {
                            Ok(envelope) => envelopes.push(envelope),
                            Err(e) => log::error!("cluster: event {seq} ignored: {e}"),
                        }
                    }
                    if let Some(first) = envelopes.first() {
                        if reads_packed {
                            self.reads_packed.insert(first.node.clone(), first.generation);
                        } else {
                            self.reads_packed.remove(&first.node);
                        }
                    }
                    self.apply(seq, time_ms, envelopes, &mut out);
                }
                Report::CaughtUp => self.resumed(&mut out),
                Report::Stored { id, .. } => {
                    self.stored += 1;
                    // Acknowledged in the order published: everything up to this one is stored.
                    if let Some((generation, n)) = numbers_of(&id) {
                        if generation == self.generation {
                            while self.unstored.front().is_some_and(|(m, _)| *m <= n) {
                                self.unstored.pop_front();
                            }
                        }
                    }
                    if self.connected && self.readable {
                        self.reachable_since.get_or_insert(now);
                    }
                }
                Report::Limit { max_messages } => {
                    self.checkpoint_every = Some(checkpoint::every(max_messages));
                }
                Report::Checkpoint(bytes) => self.restore(&bytes, &mut out),
                Report::Private(payload) => match events::decode(&payload) {
                    Ok(private) => out.push(Output::Private(private)),
                    Err(e) => log::warn!("cluster: private message ignored: {e}"),
                },
                Report::Problem(problem) => log::warn!("cluster: {problem}"),
            }
        }
        // Beats and declarations only while the room is reachable: a beat held through an
        // outage would say nothing true once published. Nor while reading the stream on after
        // a crash: the room is not the stream's yet.
        let due = self.last_sent.is_none_or(|at| now.duration_since(at) >= self.beat_every);
        let current = !self.outage.is_down() && self.resuming.is_none();
        if due && current {
            let clients = u32::try_from(self.room.online_on(&self.node)).unwrap_or(u32::MAX);
            self.publish(Event::Beat { clients });
        }
        let settled = self.reachable_since.is_some_and(|at| now - at >= self.host_timeout);
        if current && settled {
            for declaration in self.room.overdue(&self.node, self.host_timeout) {
                if let Event::HostGone { node, generation, last_seq } = &declaration {
                    let key = (node.clone(), *generation);
                    if self.declared.insert(key, *last_seq) != Some(*last_seq) {
                        self.publish(declaration);
                    }
                }
            }
        }
        out.extend(self.outage.tick(now).map(Output::Outage));
        out
    }

    fn reachability(
        &mut self,
        connected: Option<bool>,
        readable: Option<bool>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.connected = connected.unwrap_or(self.connected);
        self.readable = readable.unwrap_or(self.readable);
        if self.connected && self.readable {
            out.extend(self.outage.up().map(Output::Outage));
        } else {
            self.reachable_since = None;
            self.outage.down(now);
        }
    }

    /// Chat lines may be packed only when every other host in the room reads packed messages:
    /// a host of an earlier release would skip them (docs/cluster.md, "Upgrades").
    fn all_read_packed(&self) -> bool {
        self.room.hosts().all(|(node, host)| {
            node == self.node || self.reads_packed.get(node) == Some(&host.generation)
        })
    }

    fn apply(&mut self, seq: u64, time_ms: i64, envelopes: Vec<Envelope>, out: &mut Vec<Output>) {
        let changes = self.room.apply_message(seq, time_ms, envelopes);
        let mut new_host = false;
        for applied in &changes {
            if let Change::HostGone { node, generation, .. } = &applied.change {
                self.declared.remove(&(node.clone(), *generation));
                if *node == self.node && *generation == self.generation {
                    // This host was silent too long and the others declared it gone: its
                    // members have left the room, and whatever it still publishes in this
                    // generation is ignored. It goes on in a new one; the hub sees the
                    // declaration and deals with its clients (docs/cluster.md).
                    log::warn!(
                        "cluster: this host was declared gone; going on as a new generation"
                    );
                    self.generation = new_generation();
                    self.numbered = 0;
                    self.unstored.clear();
                }
            }
        }
        for (node, host) in self.room.hosts() {
            if node != self.node && self.hosts_seen.insert((node.to_owned(), host.generation)) {
                new_host = true;
            }
        }
        out.extend(changes.into_iter().map(Output::Applied));
        // Only members of this generation: while a restarted host reads the stream back, the
        // members of its earlier life are still in the room under its name, and a roster of
        // them would bring them back as members of this one.
        let current = self.room.numbering(&self.node, self.generation).is_some();
        if new_host && current && self.room.online_on(&self.node) > 0 {
            for roster in self.room.rosters_of(&self.node) {
                self.publish(roster);
            }
        }
    }

    /// The room as the stream has made it so far.
    pub fn room(&self) -> &Room {
        &self.room
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the room is reachable (connected and the stream readable).
    pub fn connected(&self) -> bool {
        !self.outage.is_down()
    }

    /// Since when the room has been unreachable, for `status`.
    pub fn unreachable_since(&self) -> Option<Instant> {
        self.outage.down_since()
    }

    /// Events handed over and not yet stored (held while the room is unreachable).
    /// The number of this host's last event in its generation (the counter of its message ids).
    pub fn numbered(&self) -> u64 {
        self.numbered
    }

    /// This generation's events handed to NATS and not yet stored, oldest first, by number.
    /// Until the stream is read to its end after a crash, the crashed supervisor's: a second
    /// crash meanwhile must not lose them.
    pub fn unstored(&self) -> &VecDeque<(u64, Event)> {
        if self.resuming.is_some() { &self.unstored_before } else { &self.unstored }
    }

    pub fn held(&self) -> u64 {
        self.published.saturating_sub(self.stored)
    }

    /// A clean stop: says so in the stream (the hub has sent its clients' leaves before), and
    /// waits a little for what is held to be stored.
    pub fn stop(mut self) {
        self.publish(Event::HostDown);
        drop(self.bridge);
    }
}

/// A number for this start of chatd, different from the previous one's: the time in
/// nanoseconds, mixed with the process id for two starts in the same nanosecond.
fn new_generation() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 44)
}

/// The generation and number in a message id, `<node>.<generation>.<n>`.
fn numbers_of(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.rsplitn(3, '.');
    let n = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    Some((generation, n))
}

#[cfg(test)]
mod tests {
    use super::numbers_of;

    #[test]
    fn a_message_id_names_the_generation_and_number_whatever_the_node() {
        assert_eq!(numbers_of("web-1.1733.42"), Some((1733, 42)));
        assert_eq!(numbers_of("a.b.7.3"), Some((7, 3)), "only the last two parts are numbers");
        assert_eq!(numbers_of("web1.x.3"), None);
        assert_eq!(numbers_of("3"), None);
    }
}
