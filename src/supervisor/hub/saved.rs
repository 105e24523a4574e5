//! The hub written down for an upgrade and read back by the new binary (`upgrade::state`):
//! numbering, members, history, the replay ring, counters and bans go on as they were.

use super::{Event, Hub, Member, Settings, WorkerId};
use crate::config::Config;
use crate::moderation::{Ban, Bans};
use crate::supervisor::upgrade::state::{
    SavedBan, SavedEvent, SavedHub, SavedMember, age_ms, ago, from_now, left_ms,
};
use std::collections::HashMap;
use std::rc::Rc;

impl Hub {
    pub fn save(&self) -> SavedHub {
        let mut members: Vec<SavedMember> = self
            .members
            .iter()
            .map(|(session, m)| SavedMember {
                session: *session,
                nick: m.nick.to_string(),
                ip: m.ip,
                addr: m.addr_text.to_string(),
                worker: m.worker.0,
                age_ms: age_ms(m.since),
            })
            .collect();
        members.sort_unstable_by_key(|m| m.session);
        SavedHub {
            seq: self.seq,
            next_session: self.next_session.0,
            next_guest: self.next_guest,
            members,
            events: self
                .events
                .iter()
                .map(|e| SavedEvent {
                    seq: e.seq,
                    age_ms: age_ms(e.at),
                    skip: e.skip,
                    line: e.line.to_string(),
                })
                .collect(),
            history: self.history.iter().map(|l| l.to_string()).collect(),
            counters: self.counters,
            bans: self
                .bans
                .commanded()
                .iter()
                .map(|b| SavedBan {
                    target: b.target,
                    left_ms: b.until.map(left_ms),
                    reason: b.reason.clone(),
                })
                .collect(),
            bans_changed: self.bans_changed,
        }
    }

    /// The hub `saved` describes, with `config`'s settings; nicks and the per-address counts
    /// are rebuilt from the members.
    pub fn restore(config: &Config, saved: SavedHub) -> Hub {
        let mut hub = Hub::new(config);
        hub.settings = Settings::from(config);
        hub.seq = saved.seq;
        hub.next_session = crate::bus::SessionId(saved.next_session);
        hub.next_guest = saved.next_guest;
        let mut per_ip = HashMap::new();
        for m in saved.members {
            hub.nicks.insert(m.nick.to_ascii_lowercase(), m.session);
            *per_ip.entry(m.ip).or_insert(0) += 1;
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
