//! The hub written down for an upgrade and read back by the new binary (`upgrade::state`):
//! numbering, members, history, the replay ring, counters and bans go on as they were.

use super::{Event, Hub, Member, WorkerId};
use crate::bus::message::SessionId;
use crate::config::Config;
use crate::moderation::{Ban, Bans};
use crate::supervisor::upgrade::state::{
    SavedBan, SavedEvent, SavedHub, SavedMember, age_ms, ago, from_now, left_ms,
};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

fn saved_member(session: SessionId, m: &Member) -> SavedMember {
    SavedMember {
        session,
        nick: m.nick.to_string(),
        ip: m.ip,
        addr: m.addr_text.to_string(),
        worker: m.worker.0,
        age_ms: age_ms(m.since),
    }
}

/// `e` as saved at `now` (one clock reading for a whole batch of events).
fn saved_event(e: &Event, now: Instant) -> SavedEvent {
    let age_ms = u64::try_from(now.saturating_duration_since(e.at).as_millis()).unwrap_or(u64::MAX);
    SavedEvent { seq: e.seq, age_ms, skip: e.skip, line: e.line.to_string() }
}

impl Hub {
    /// The number of the last room event: the hub's state changed when it moved.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The worker serving `session`, if it is a member.
    pub fn member_worker(&self, session: crate::bus::SessionId) -> Option<WorkerId> {
        self.members.get(&session).map(|m| m.worker)
    }

    pub fn save(&self) -> SavedHub {
        self.save_recent(usize::MAX, usize::MAX)
    }

    /// The room with only the newest `events` of the replay ring and the newest `history`
    /// lines: what systemd's store keeps (`supervisor/stored.rs`).
    pub fn save_recent(&self, events: usize, history: usize) -> SavedHub {
        let mut saved = self.save_newest(events, history);
        saved.members = self.members.iter().map(|(s, m)| saved_member(*s, m)).collect();
        saved.members.sort_unstable_by_key(|m| m.session);
        saved.bans = self
            .bans
            .commanded()
            .iter()
            .map(|b| SavedBan {
                target: b.target,
                left_ms: b.until.map(left_ms),
                reason: b.reason.clone(),
            })
            .collect();
        saved
    }

    /// What changed since event `seq`, when [`Self::history_pushed`] was `pushed`: numbering,
    /// counters, the events after `seq` and the history lines added since; no members, no
    /// bans. Costs what changed, not what the room holds.
    pub fn save_since(&self, seq: u64, pushed: u64) -> SavedHub {
        let newer = self.events.iter().rev().take_while(|e| e.seq > seq).count();
        let added =
            usize::try_from(self.history_pushed.saturating_sub(pushed)).unwrap_or(usize::MAX);
        self.save_newest(newer, added)
    }

    /// Numbering, counters, the newest `events` of the replay ring and the newest `history`
    /// lines; no members, no bans.
    fn save_newest(&self, events: usize, history: usize) -> SavedHub {
        let now = Instant::now();
        SavedHub {
            seq: self.seq,
            next_session: self.next_session.0,
            next_guest: self.next_guest,
            members: Vec::new(),
            events: self
                .events
                .iter()
                .skip(self.events.len().saturating_sub(events))
                .map(|e| saved_event(e, now))
                .collect(),
            history: self
                .history
                .iter()
                .skip(self.history.len().saturating_sub(history))
                .map(|l| l.to_string())
                .collect(),
            counters: self.counters,
            bans: Vec::new(),
            bans_changed: self.bans_changed,
        }
    }

    /// Lines ever added to the history.
    pub fn history_pushed(&self) -> u64 {
        self.history_pushed
    }

    /// Room events that changed who is in the room or their nicks.
    pub fn presence_edits(&self) -> u64 {
        self.presence_edits
    }

    /// The members whose presence changed since [`Self::presence_edits`] was `edits`: those
    /// in the room now, and the sessions gone from it. `None` when that is further back than
    /// the hub remembers.
    pub fn presence_since(&self, edits: u64) -> Option<(Vec<SavedMember>, Vec<SessionId>)> {
        let n = usize::try_from(self.presence_edits.checked_sub(edits)?).ok()?;
        if n > self.presence_log.len() {
            return None;
        }
        let mut changed: Vec<SessionId> =
            self.presence_log.iter().skip(self.presence_log.len() - n).copied().collect();
        changed.sort_unstable();
        changed.dedup();
        let (mut here, mut gone) = (Vec::new(), Vec::new());
        for session in changed {
            match self.members.get(&session) {
                Some(m) => here.push(saved_member(session, m)),
                None => gone.push(session),
            }
        }
        Some((here, gone))
    }

    /// Times a ban from the command line was added or lifted.
    pub fn bans_edits(&self) -> u64 {
        self.bans_edits
    }

    /// The hub `saved` describes, with `config`'s settings; nicks and the per-address counts
    /// are rebuilt from the members.
    pub fn restore(config: &Config, saved: SavedHub) -> Hub {
        let mut hub = Hub::new(config);
        hub.seq = saved.seq;
        hub.next_session = crate::bus::SessionId(saved.next_session);
        hub.next_guest = saved.next_guest;
        let mut per_ip = HashMap::new();
        for m in saved.members {
            hub.nicks.insert(m.nick.to_ascii_lowercase(), m.session);
            // `max_clients_per_ip` counts this host's clients (in cluster mode the list holds
            // other hosts' members too).
            if WorkerId(m.worker) != super::cluster::REMOTE {
                *per_ip.entry(m.ip).or_insert(0) += 1;
            }
            let member = Member {
                nick: m.nick.into_boxed_str(),
                ip: m.ip,
                addr_text: m.addr.into_boxed_str(),
                worker: WorkerId(m.worker),
                since: ago(m.age_ms),
            };
            hub.members.insert(m.session, member);
        }
        hub.per_ip = per_ip;
        hub.events = saved
            .events
            .into_iter()
            .map(|e| Event { seq: e.seq, at: ago(e.age_ms), skip: e.skip, line: e.line.into() })
            .collect();
        hub.history = saved.history.into_iter().map(Rc::from).collect();
        hub.counters = saved.counters;
        let mut bans = Bans::configured_with(&config.moderation.banned);
        for b in saved.bans {
            bans.add(Ban { target: b.target, until: b.left_ms.map(from_now), reason: b.reason });
        }
        hub.bans = bans;
        hub.bans_changed = saved.bans_changed;
        hub
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Recorder, admit, hub, room_lines};
    use super::*;
    use crate::bus::RoomRequest;
    use crate::bus::message::{ConnId, RoomUpdate};
    use crate::moderation::Target;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    #[test]
    fn the_room_goes_on_where_it_was_written_down() {
        let mut old = hub(|_| {});
        let (alice, _) = admit(&mut old, WorkerId(0), 1000);
        let (bob, _) = admit(&mut old, WorkerId(1), 1001);
        let mut out = Recorder::default();
        old.handle(
            WorkerId(0),
            RoomRequest::Nick { session: alice, nick: "alice".into() },
            &mut out,
        );
        old.handle(WorkerId(1), RoomRequest::Say { session: bob, text: "hi".into() }, &mut out);
        let target = Target::parse("192.0.2.0/24").expect("target");
        let until = Some(Instant::now() + Duration::from_secs(3600));
        old.ban(Ban { target, until, reason: Some("spam".into()) }, &mut out);

        let json = serde_json::to_vec(&old.save()).expect("encode");
        let saved: SavedHub = serde_json::from_slice(&json).expect("decode");
        let mut new = Hub::restore(&Config::default(), saved);

        assert_eq!(new.online(), 2);
        assert_eq!(new.online_on(WorkerId(1)), 1);
        assert_eq!(new.history_len(), old.history_len());
        assert_eq!(new.counters(), old.counters());
        // Numbering and guest names go on; nicks stay taken.
        let (carol, out) = admit(&mut new, WorkerId(1), 1002);
        assert_eq!(room_lines(&out), vec![(old.seq + 1, "* guest-3 joined (3 online)".into())]);
        let mut out = Recorder::default();
        new.handle(
            WorkerId(1),
            RoomRequest::Nick { session: carol, nick: "Alice".into() },
            &mut out,
        );
        assert!(
            matches!(&out.sent[0].1, RoomUpdate::Direct { lines, .. } if lines[0].contains("taken")),
            "{:?}",
            out.sent
        );
        // A session moving now is replayed what it missed from before the exec.
        let mut out = Recorder::default();
        new.handle(WorkerId(2), RoomRequest::Adopt { session: alice, last_seq: 2 }, &mut out);
        let resumed = out.sent.iter().find_map(|(_, m)| match m {
            RoomUpdate::Resume { lines, .. } => Some(lines.clone()),
            _ => None,
        });
        let resumed = resumed.expect("resumed");
        assert!(resumed.iter().any(|l| l.ends_with("<guest-2> hi")), "{resumed:?}");
        // The ban from the command line still holds, with its time left.
        let mut out = Recorder::default();
        let addr = SocketAddr::from(([192, 0, 2, 7], 4000));
        new.handle(WorkerId(0), RoomRequest::Join { conn: ConnId(9), addr }, &mut out);
        assert!(matches!(&out.sent[0].1, RoomUpdate::Refused { .. }), "{:?}", out.sent);
        let left = new.bans().commanded()[0].left(Instant::now()).expect("an end");
        assert!(left > Duration::from_secs(3590), "{left:?}");
    }
}
