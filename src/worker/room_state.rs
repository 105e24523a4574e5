//! The worker's own copy of the room: who is in it, and its history.
//!
//! Every worker receives every room event in the hub's order, and each event says what it did
//! ([`RoomEvent`]), so keeping presence and history here costs little and lets the worker
//! answer `/who`, `/history` and a joiner's `history_on_join` itself. That keeps the hub's work
//! proportional to what the room does rather than to what clients ask (a client sending `/who`
//! twenty times a second into a room of thousands costs its own worker a memcpy per answer),
//! and an answer is the asker's output alone: it counts against the asker's own backlog, so a
//! client that asks and never reads is cut as `too slow` without anyone else noticing.
//!
//! The copy is exact because it is built from the same events in the same order as the hub's:
//! a worker starts from the hub's snapshot (`Sync` + `Snapshot`) and applies every event after
//! it, so `/who` shows the room as of the last line the asker was sent.

use crate::bus::message::{RoomEvent, SessionId};
use crate::config::HistoryEvents;
use std::collections::{HashMap, VecDeque};

/// `/history` without a count.
pub const DEFAULT_HISTORY_REQUEST: usize = 20;

pub struct RoomState {
    members: HashMap<SessionId, Nick>,
    history: VecDeque<Box<str>>,
    history_limit: usize,
    history_events: HistoryEvents,
    /// The `/who` answer, rendered once per change of presence: a room of thousands asked
    /// many times a second must not sort its nicks each time.
    who: Option<String>,
}

/// A nickname as kept per member on every worker. Most members of a big room are guests, and
/// `guest-N` is kept as its number: a room of 50,000 then costs each worker a map entry per
/// member and no string at all.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nick {
    Guest(u64),
    Named(Box<str>),
}

impl Nick {
    fn new(nick: String) -> Nick {
        match nick.strip_prefix("guest-").and_then(|n| n.parse::<u64>().ok()) {
            // Only when it renders back to exactly the same text ("guest-007" does not).
            Some(n) if format!("guest-{n}") == nick => Nick::Guest(n),
            _ => Nick::Named(nick.into_boxed_str()),
        }
    }

    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Nick::Guest(n) => format!("guest-{n}").into(),
            Nick::Named(nick) => (&**nick).into(),
        }
    }
}

impl RoomState {
    pub fn new(history_limit: usize, history_events: HistoryEvents) -> RoomState {
        RoomState {
            members: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            history_events,
            who: None,
        }
    }

    /// The hub's snapshot begins: what this worker knew is replaced by what follows.
    pub fn reset(&mut self) {
        self.members.clear();
        self.history.clear();
        self.who = None;
    }

    /// Part of the hub's snapshot.
    pub fn load(&mut self, members: Vec<(SessionId, String)>, history: Vec<String>) {
        for (session, nick) in members {
            self.members.insert(session, Nick::new(nick));
        }
        for line in history {
            self.keep(line);
        }
        self.who = None;
    }

    /// One numbered room event, with the line it showed.
    pub fn apply(&mut self, event: RoomEvent, line: String) {
        let keep = match self.history_events {
            HistoryEvents::Chat => event.is_talk(),
            HistoryEvents::All => true,
        };
        match event {
            RoomEvent::Chat | RoomEvent::Me | RoomEvent::Notice => {}
            RoomEvent::Join { session, nick } | RoomEvent::Nick { session, nick } => {
                self.members.insert(session, Nick::new(nick));
                self.who = None;
            }
            RoomEvent::Leave { session } => {
                self.members.remove(&session);
                self.who = None;
            }
        }
        if keep {
            self.keep(line);
        }
    }

    fn keep(&mut self, line: String) {
        if self.history_limit == 0 {
            return;
        }
        self.history.push_back(line.into_boxed_str());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
    }

    /// `* N online: a, b, c`, nicks sorted case-insensitively; cut with `… and K more` where it
    /// would pass `budget` bytes (the asker's backlog must be able to hold it).
    pub fn who(&mut self, budget: usize) -> &str {
        let members = &self.members;
        self.who.get_or_insert_with(|| {
            let mut nicks: Vec<std::borrow::Cow<'_, str>> =
                members.values().map(Nick::text).collect();
            nicks.sort_by_cached_key(|n| n.to_ascii_lowercase());
            let mut line = format!("* {} online: ", nicks.len());
            for (i, nick) in nicks.iter().enumerate() {
                // Room for ", ", this nick and the longest possible "… and K more" suffix.
                if line.len() + nick.len() + 40 > budget {
                    line.push_str(&format!("… and {} more", nicks.len() - i));
                    break;
                }
                if i > 0 {
                    line.push_str(", ");
                }
                line.push_str(nick);
            }
            line
        })
    }

    /// The answer to `/history [N]`: the last N history lines (at most the configured history),
    /// as many of the newest as fit in `budget` bytes (always at least one).
    pub fn recent(&self, wanted: usize, budget: usize) -> Vec<&str> {
        let wanted = wanted.min(self.history.len());
        let mut used = 0;
        let mut lines: Vec<&str> = Vec::with_capacity(wanted.min(1024));
        for line in self.history.iter().rev().take(wanted) {
            used += line.len() + 2;
            if used > budget && !lines.is_empty() {
                break;
            }
            lines.push(line);
        }
        lines.reverse();
        lines
    }

    /// How many lines history holds now.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(room: &mut RoomState, session: SessionId, nick: &str) {
        let line = format!("* {nick} joined");
        room.apply(RoomEvent::Join { session, nick: nick.into() }, line);
    }

    #[test]
    fn who_follows_joins_renames_and_leaves_and_is_cached() {
        let mut room = RoomState::new(10, HistoryEvents::Chat);
        join(&mut room, SessionId(1), "guest-1");
        join(&mut room, SessionId(2), "bob");
        join(&mut room, SessionId(3), "Alice");
        assert_eq!(room.who(1 << 20), "* 3 online: Alice, bob, guest-1");
        room.apply(
            RoomEvent::Nick { session: SessionId(1), nick: "Carol".into() },
            "renamed".into(),
        );
        room.apply(RoomEvent::Leave { session: SessionId(2) }, "left".into());
        assert_eq!(room.who(1 << 20), "* 2 online: Alice, Carol");
        // Talk does not change presence; the cached answer stays.
        room.apply(RoomEvent::Chat, "12:00 <Alice> hi".into());
        assert_eq!(room.who(1 << 20), "* 2 online: Alice, Carol");
    }

    #[test]
    fn guest_numbers_round_trip_exactly() {
        for nick in ["guest-1", "guest-007", "guest-", "guest-x", "Guest-3", "guest-0"] {
            assert_eq!(Nick::new(nick.to_string()).text(), nick);
        }
        assert_eq!(Nick::new("guest-12".into()), Nick::Guest(12));
    }

    #[test]
    fn who_is_cut_to_the_budget() {
        let mut room = RoomState::new(0, HistoryEvents::Chat);
        for i in 0..1000 {
            join(&mut room, SessionId(i), &format!("user{i:04}"));
        }
        let line = room.who(2000).to_string();
        assert!(line.len() <= 2000, "{}", line.len());
        assert!(line.starts_with("* 1000 online: user0000, user0001"));
        assert!(line.ends_with("more"), "{line}");
    }

    #[test]
    fn history_keeps_talk_by_default_and_everything_on_request() {
        let mut room = RoomState::new(3, HistoryEvents::Chat);
        join(&mut room, SessionId(1), "a");
        for i in 0..5 {
            room.apply(RoomEvent::Chat, format!("line {i}"));
        }
        room.apply(RoomEvent::Leave { session: SessionId(1) }, "* a left".into());
        assert_eq!(room.recent(10, 1 << 20), vec!["line 2", "line 3", "line 4"]);
        assert_eq!(room.recent(1, 1 << 20), vec!["line 4"]);
        // Only the newest lines that fit the budget.
        assert_eq!(room.recent(3, 16), vec!["line 3", "line 4"]);

        let mut all = RoomState::new(3, HistoryEvents::All);
        join(&mut all, SessionId(1), "a");
        all.apply(RoomEvent::Me, "* a waves".into());
        assert_eq!(all.recent(10, 1 << 20), vec!["* a joined", "* a waves"]);
    }

    #[test]
    fn a_snapshot_replaces_what_was_there() {
        let mut room = RoomState::new(5, HistoryEvents::Chat);
        join(&mut room, SessionId(9), "stale");
        room.apply(RoomEvent::Chat, "stale line".into());
        room.reset();
        room.load(vec![(SessionId(1), "a".into())], vec!["old".into()]);
        room.load(vec![(SessionId(2), "b".into())], vec!["older".into()]);
        assert_eq!(room.who(1 << 20), "* 2 online: a, b");
        assert_eq!(room.recent(5, 1 << 20), vec!["old", "older"]);
    }
}
