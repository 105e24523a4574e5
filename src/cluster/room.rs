//! The room as every host computes it from the stream: a deterministic state machine.
//!
//! Every host applies the same events in the same (stream) order with [`Room::apply`], and
//! nothing else changes the room, so every host holds the same room: the same members under the
//! same nicks, the same guest numbers, the same hosts alive. A race is settled by the order:
//! two claims on one nick, the first in the stream wins and the second is refused, on every host
//! alike; two hosts declaring a third one gone, the first declaration counts and the second
//! finds nothing left to do. No clock but the stream's own timestamps is read and nothing is
//! random, so the outcome cannot depend on which host computes it.
//!
//! Hosts are known by `cluster.node` and a generation they pick at start. The first event of a
//! new generation retires the previous one (the host restarted before anyone declared it gone);
//! events of a retired generation are ignored, so a host that comes back after being declared
//! gone cannot act on members that already left. A member is numbered by the stream sequence of
//! its join ([`MemberId`]), the same on every host.

use super::events::{Envelope, Event, RosterEntry};
use crate::bus::message::{LeaveReason, SessionId};
use crate::moderation::Target;
use crate::protocol::command::is_valid_nick;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// Members in one roster event: at most 65 bytes each encoded (a 32-byte nick, an IPv6 address,
/// ids of 10 bytes), about 270 KB a part, far below NATS' 1 MB `max_payload`.
pub const ROSTER_CHUNK: usize = 4096;

/// A member of the room, the same number on every host: the stream sequence of its join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub u64);

/// Someone in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The host serving it.
    pub node: String,
    /// Its session on that host.
    pub session: SessionId,
    pub nick: String,
    pub addr: SocketAddr,
}

/// A host taking part in the room, as the stream shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub generation: u64,
    /// Stream sequence and time (ms since the Unix epoch) of its last event.
    pub last_seq: u64,
    pub last_time_ms: i64,
    /// Clients it said it serves in its last beat.
    pub clients: u32,
    order: Order,
}

/// Where a host's events stand in its own numbering.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    /// The lowest number applied, and the next one expected: `None` before its first event.
    /// A room that read a trimmed stream meets a generation in the middle, so the first number
    /// seen starts it, whatever it is.
    first: Option<u64>,
    next: Option<u64>,
    /// Events that came before an earlier one of the host: number → (seq, time, event).
    waiting: BTreeMap<u64, (u64, i64, Event)>,
}

/// A host generation's numbering as the room has applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbering {
    /// The last number applied in order (0: none).
    pub last: u64,
    /// The numbers missing before events that wait for them, lowest first (none: nothing
    /// waits).
    pub missing: Vec<u64>,
    /// The highest number the room has of the generation, applied or waiting.
    pub highest: u64,
}

/// What to do with a host's event numbered `n`.
enum Place {
    Now,
    /// After an earlier one, not stored yet.
    Wait,
    /// Applied already (a retry stored again after JetStream's duplicate window).
    Done,
}

impl Order {
    fn place(&mut self, n: u64) -> Place {
        let (Some(first), Some(next)) = (self.first, self.next) else {
            if n > 0 {
                (self.first, self.next) = (Some(n), Some(n + 1));
            }
            return Place::Now;
        };
        if n == 0 {
            Place::Now
        } else if n == next {
            self.next = Some(n + 1);
            Place::Now
        } else if n > next {
            Place::Wait
        } else if n < first {
            // Before the first one applied: an event of the generation's start stored late.
            // Its place has passed; applied here rather than lost.
            self.first = Some(n);
            Place::Now
        } else {
            Place::Done
        }
    }
}

/// What applying one event did to the room, for the hub to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined {
        id: MemberId,
        member: Member,
    },
    Left {
        id: MemberId,
        member: Member,
        reason: LeaveReason,
    },
    Said {
        id: MemberId,
        member: Member,
        text: String,
    },
    Me {
        id: MemberId,
        member: Member,
        text: String,
    },
    Renamed {
        id: MemberId,
        member: Member,
        old: String,
    },
    /// The claim came after another one on the same nick (or the nick of a member the claiming
    /// host did not know yet): only the claiming host tells its client.
    NickRefused {
        node: String,
        session: SessionId,
        nick: String,
    },
    Notice {
        text: String,
    },
    /// An operator kicked the member `session` of host `node`; that host removes it.
    Kick {
        node: String,
        session: SessionId,
        reason: Option<String>,
    },
    /// An operator's ban, for every host's list; `until_ms` since the Unix epoch.
    Ban {
        target: Target,
        until_ms: Option<i64>,
        reason: Option<String>,
    },
    Unban {
        target: Target,
    },
    /// A member this room lacked, learnt from its host's roster: in the room for a while
    /// already (no join to show).
    Learnt {
        id: MemberId,
        member: Member,
    },
    /// A generation of a host is over: declared gone, restarted, or stopped (`clean`). Its
    /// remaining members left (`connection lost`) just before this.
    HostGone {
        node: String,
        generation: u64,
        clean: bool,
    },
}

/// One change with its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub seq: u64,
    /// The stream's timestamp of the event, ms since the Unix epoch: `{time}`, alike everywhere.
    pub time_ms: i64,
    pub change: Change,
}

/// The room's state; equal on two hosts that applied the same events. Serializable: it
/// crosses a re-execution of the supervisor (`Cluster::save`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    members: BTreeMap<MemberId, Member>,
    /// `(node, session)` → member.
    sessions: BTreeMap<(String, SessionId), MemberId>,
    /// Lower-cased nick → member: nicks are unique case-insensitively.
    nicks: BTreeMap<String, MemberId>,
    hosts: BTreeMap<String, Host>,
    /// Generations that are over; one entry per host restart.
    retired: BTreeSet<(String, u64)>,
    next_guest: u64,
    last_seq: u64,
    last_time_ms: i64,
}

impl Room {
    pub fn new() -> Room {
        Room { next_guest: 1, ..Room::default() }
    }

    /// Applies the event at stream sequence `seq`. Sequences at or before the last one applied
    /// are ignored, so a redelivery changes nothing. A host's events are applied in the order it
    /// numbered them ([`Envelope::n`]): one that comes before an earlier one of the same host
    /// (a retry stored after the next event, across a stream leader change) waits for it, and
    /// both are applied at the earlier one's place.
    pub fn apply(&mut self, seq: u64, time_ms: i64, envelope: Envelope) -> Vec<Applied> {
        self.apply_message(seq, time_ms, vec![envelope])
    }

    /// Applies the events of the message at stream sequence `seq`, in order, as [`Room::apply`]
    /// does one; they share its sequence. Several events in one message are chat lines of one
    /// host generation (`bridge/publish.rs`); a message with anything else among several is
    /// ignored whole, alike on every host, since a second join at one sequence would take the
    /// first one's member number.
    pub fn apply_message(
        &mut self,
        seq: u64,
        time_ms: i64,
        envelopes: Vec<Envelope>,
    ) -> Vec<Applied> {
        if seq <= self.last_seq {
            return Vec::new();
        }
        self.last_seq = seq;
        self.last_time_ms = self.last_time_ms.max(time_ms);
        if envelopes.len() > 1 && !is_pack(&envelopes) {
            log::error!("cluster: message {seq} ignored: it packs more than chat lines");
            return Vec::new();
        }
        let mut applied = Vec::new();
        for envelope in envelopes {
            applied.extend(self.apply_event(seq, time_ms, envelope));
        }
        applied
    }

    fn apply_event(&mut self, seq: u64, time_ms: i64, envelope: Envelope) -> Vec<Applied> {
        let Envelope { node, generation, n, event } = envelope;
        if self.retired.contains(&(node.clone(), generation)) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        match self.hosts.get(&node).map(|h| h.generation) {
            Some(current) if current != generation => {
                self.end_generation(&node, false, &mut changes);
                self.hosts.insert(node.clone(), Host::new(generation));
            }
            Some(_) => {}
            None => {
                self.hosts.insert(node.clone(), Host::new(generation));
            }
        }
        let mut applied: Vec<Applied> =
            changes.into_iter().map(|change| Applied { seq, time_ms, change }).collect();
        let Some(host) = self.hosts.get_mut(&node) else { return applied };
        host.last_seq = seq;
        host.last_time_ms = host.last_time_ms.max(time_ms);
        let mut ready = match host.order.place(n) {
            Place::Now => vec![(seq, time_ms, event)],
            Place::Wait => {
                host.order.waiting.insert(n, (seq, time_ms, event));
                return applied;
            }
            Place::Done => return applied,
        };
        // What waited for this one, in the host's order.
        while let Some(next) = host.order.next.and_then(|next| host.order.waiting.remove(&next)) {
            host.order.next = host.order.next.map(|next| next + 1);
            ready.push(next);
        }
        for (seq, time_ms, event) in ready {
            if self.retired.contains(&(node.clone(), generation)) {
                break;
            }
            let mut changes = Vec::new();
            self.event(seq, node.clone(), event, &mut changes);
            applied.extend(changes.into_iter().map(|change| Applied { seq, time_ms, change }));
        }
        applied
    }

    fn event(&mut self, seq: u64, node: String, event: Event, changes: &mut Vec<Change>) {
        match event {
            Event::Beat { clients } => {
                if let Some(host) = self.hosts.get_mut(&node) {
                    host.clients = clients;
                }
            }
            Event::HostDown => self.end_generation(&node, true, changes),
            Event::HostGone { node: gone, generation, last_seq } => {
                let current = self.hosts.get(&gone);
                if gone != node
                    && current.is_some_and(|h| h.generation == generation && h.last_seq <= last_seq)
                {
                    self.end_generation(&gone, false, changes);
                }
            }
            Event::Join { session, addr } => {
                if self.sessions.contains_key(&(node.clone(), session)) {
                    return;
                }
                let nick = self.guest_nick();
                let member = Member { node, session, nick, addr };
                changes.push(Change::Joined { id: MemberId(seq), member: member.clone() });
                self.insert(MemberId(seq), member);
            }
            Event::Leave { session, reason } => {
                if let Some((id, member)) = self.remove(&node, session) {
                    changes.push(Change::Left { id, member, reason });
                }
            }
            Event::Say { session, text } => {
                if let Some((id, member)) = self.find(&node, session) {
                    changes.push(Change::Said { id, member: member.clone(), text });
                }
            }
            Event::Me { session, text } => {
                if let Some((id, member)) = self.find(&node, session) {
                    changes.push(Change::Me { id, member: member.clone(), text });
                }
            }
            Event::Nick { session, nick } => self.rename(node, session, nick, changes),
            Event::Notice { text } => changes.push(Change::Notice { text }),
            Event::Roster { members, next_guest } => {
                self.roster(&node, members, next_guest, changes)
            }
            Event::Kick { node, session, reason } => {
                if self.find(&node, session).is_some() {
                    changes.push(Change::Kick { node, session, reason });
                }
            }
            Event::Ban { target, until_ms, reason } => {
                changes.push(Change::Ban { target, until_ms, reason })
            }
            Event::Unban { target } => changes.push(Change::Unban { target }),
        }
    }

    fn rename(&mut self, node: String, session: SessionId, nick: String, out: &mut Vec<Change>) {
        let Some((id, member)) = self.find(&node, session) else { return };
        if !is_valid_nick(&nick) || member.nick == nick {
            return;
        }
        let key = nick.to_ascii_lowercase();
        if self.nicks.get(&key).is_some_and(|owner| *owner != id) {
            out.push(Change::NickRefused { node, session, nick });
            return;
        }
        let old = member.nick.clone();
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(key, id);
        if let Some(member) = self.members.get_mut(&id) {
            member.nick = nick;
            out.push(Change::Renamed { id, member: member.clone(), old });
        }
    }

    /// Learns the members of `node` that this room lacks (it read the stream from after their
    /// joins). Whatever it already knows stays as it is, so hosts that saw every join are not
    /// changed. A listed nick someone else holds here is not taken over: that member keeps a
    /// guest nick.
    fn roster(
        &mut self,
        node: &str,
        members: Vec<RosterEntry>,
        next_guest: u64,
        changes: &mut Vec<Change>,
    ) {
        self.next_guest = self.next_guest.max(next_guest);
        for entry in members {
            let id = MemberId(entry.id);
            let key = (node.to_owned(), entry.session);
            if self.members.contains_key(&id) || self.sessions.contains_key(&key) {
                continue;
            }
            let free = is_valid_nick(&entry.nick)
                && !self.nicks.contains_key(&entry.nick.to_ascii_lowercase());
            let nick = if free { entry.nick } else { self.guest_nick() };
            let member =
                Member { node: node.to_owned(), session: entry.session, nick, addr: entry.addr };
            changes.push(Change::Learnt { id, member: member.clone() });
            self.insert(id, member);
        }
    }

    /// The end of `node`'s current generation: its members leave as `connection lost`, in the
    /// order they joined, and the generation is retired.
    fn end_generation(&mut self, node: &str, clean: bool, changes: &mut Vec<Change>) {
        let Some(host) = self.hosts.remove(node) else { return };
        let gone: Vec<SessionId> =
            self.members.values().filter(|m| m.node == node).map(|m| m.session).collect();
        for session in gone {
            if let Some((id, member)) = self.remove(node, session) {
                changes.push(Change::Left { id, member, reason: LeaveReason::Lost });
            }
        }
        self.retired.insert((node.to_owned(), host.generation));
        let generation = host.generation;
        changes.push(Change::HostGone { node: node.to_owned(), generation, clean });
    }

    fn insert(&mut self, id: MemberId, member: Member) {
        self.nicks.insert(member.nick.to_ascii_lowercase(), id);
        self.sessions.insert((member.node.clone(), member.session), id);
        self.members.insert(id, member);
    }

    fn remove(&mut self, node: &str, session: SessionId) -> Option<(MemberId, Member)> {
        let id = self.sessions.remove(&(node.to_owned(), session))?;
        let member = self.members.remove(&id)?;
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        Some((id, member))
    }

    fn find(&self, node: &str, session: SessionId) -> Option<(MemberId, &Member)> {
        let id = *self.sessions.get(&(node.to_owned(), session))?;
        Some((id, self.members.get(&id)?))
    }

    /// The next free `guest-N`, skipping numbers someone took with `/nick`.
    fn guest_nick(&mut self) -> String {
        loop {
            let nick = format!("guest-{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// The declarations `me` should publish now: every other host whose last event is more
    /// than `timeout` older than the newest event applied. Measured in stream time only, so a
    /// host that is itself cut off (and so applies nothing new) never declares anyone gone.
    pub fn overdue(&self, me: &str, timeout: Duration) -> Vec<Event> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        self.hosts
            .iter()
            .filter(|(node, host)| {
                node.as_str() != me
                    && self.last_time_ms.saturating_sub(host.last_time_ms) > timeout_ms
            })
            .map(|(node, host)| Event::HostGone {
                node: node.clone(),
                generation: host.generation,
                last_seq: host.last_seq,
            })
            .collect()
    }

    /// `node`'s members as roster events (see [`Event::Roster`]), [`ROSTER_CHUNK`] members at
    /// most in each: a host of 100,000 clients would otherwise publish one message of several
    /// MB, past NATS' `max_payload` (1 MB by default), which the server refuses every time it is
    /// retried, holding up everything the host publishes after it. Each part is applied alone.
    pub fn rosters_of(&self, node: &str) -> Vec<Event> {
        let members: Vec<RosterEntry> = self
            .members
            .iter()
            .filter(|(_, m)| m.node == node)
            .map(|(id, m)| RosterEntry {
                id: id.0,
                session: m.session,
                nick: m.nick.clone(),
                addr: m.addr,
            })
            .collect();
        members
            .chunks(ROSTER_CHUNK)
            .map(|part| Event::Roster { members: part.to_vec(), next_guest: self.next_guest })
            .collect()
    }

    pub fn members(&self) -> impl Iterator<Item = (MemberId, &Member)> {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    pub fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// The member of `node`'s `session`, if it is in the room.
    pub fn member_of(&self, node: &str, session: SessionId) -> Option<MemberId> {
        self.sessions.get(&(node.to_owned(), session)).copied()
    }

    /// Who holds `nick`, case-insensitively: where `/msg` goes.
    pub fn by_nick(&self, nick: &str) -> Option<(MemberId, &Member)> {
        let id = *self.nicks.get(&nick.to_ascii_lowercase())?;
        Some((id, self.members.get(&id)?))
    }

    pub fn online(&self) -> usize {
        self.members.len()
    }

    /// Hosts taking part, by name.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &Host)> {
        self.hosts.iter().map(|(n, h)| (n.as_str(), h))
    }

    /// Where generation `generation` of host `node` stands in its own numbering; `None` if
    /// that is not the host's generation in the room.
    pub fn numbering(&self, node: &str, generation: u64) -> Option<Numbering> {
        let host = self.hosts.get(node).filter(|h| h.generation == generation)?;
        let last = host.order.next.map_or(0, |next| next - 1);
        let highest = host.order.waiting.keys().next_back().copied().unwrap_or(last).max(last);
        let missing = (last + 1..highest).filter(|n| !host.order.waiting.contains_key(n)).collect();
        Some(Numbering { last, missing, highest })
    }

    /// Members served by `node`.
    pub fn online_on(&self, node: &str) -> usize {
        self.members.values().filter(|m| m.node == node).count()
    }

    /// The stream sequence of the last event applied: where reading resumes.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl Host {
    fn new(generation: u64) -> Host {
        Host { generation, last_seq: 0, last_time_ms: 0, clients: 0, order: Order::default() }
    }
}

/// Chat lines of one host generation: what a packed message may carry.
fn is_pack(envelopes: &[Envelope]) -> bool {
    let first = &envelopes[0];
    envelopes.iter().all(|e| {
        e.node == first.node
            && e.generation == first.generation
            && matches!(e.event, Event::Say { .. } | Event::Me { .. })
    })
}

#[cfg(test)]
mod tests;
