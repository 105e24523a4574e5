use super::*;
use proptest::prelude::*;

/// Builds a stream: events numbered from 1, a second apart, each host's numbered as it would.
#[derive(Default)]
struct Stream {
    events: Vec<(u64, i64, Envelope)>,
    numbered: std::collections::HashMap<(String, u64), u64>,
}

impl Stream {
    fn push(&mut self, node: &str, generation: u64, event: Event) -> u64 {
        let seq = self.events.len() as u64 + 1;
        let n = self.numbered.entry((node.into(), generation)).or_default();
        *n += 1;
        let envelope = Envelope { node: node.into(), generation, n: *n, event };
        self.events.push((seq, seq as i64 * 1000, envelope));
        seq
    }

    /// Pushes at a chosen time (ms).
    fn push_at(&mut self, time_ms: i64, node: &str, generation: u64, event: Event) -> u64 {
        let seq = self.push(node, generation, event);
        if let Some(last) = self.events.last_mut() {
            last.1 = time_ms;
        }
        seq
    }

    /// Pushes an event numbered `n` by its host, as a retry stored late is.
    fn push_numbered(&mut self, node: &str, generation: u64, n: u64, event: Event) -> u64 {
        let seq = self.events.len() as u64 + 1;
        let envelope = Envelope { node: node.into(), generation, n, event };
        self.events.push((seq, seq as i64 * 1000, envelope));
        seq
    }

    fn apply(&self, room: &mut Room) -> Vec<Applied> {
        self.events.iter().flat_map(|(seq, t, e)| room.apply(*seq, *t, e.clone())).collect()
    }
}

fn join(session: u64) -> Event {
    Event::Join { session: SessionId(session), addr: "192.0.2.1:4000".parse().unwrap() }
}

fn nick(session: u64, nick: &str) -> Event {
    Event::Nick { session: SessionId(session), nick: nick.into() }
}

fn nicks(room: &Room) -> Vec<(String, String)> {
    room.members().map(|(_, m)| (m.node.clone(), m.nick.clone())).collect()
}

#[test]
fn guests_are_numbered_across_hosts_in_stream_order() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("b", 2, join(1));
    s.push("a", 1, nick(1, "guest-3"));
    s.push("b", 2, join(2));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    let joined: Vec<(u64, String)> = applied
        .iter()
        .filter_map(|a| match &a.change {
            Change::Joined { id, member } => Some((id.0, member.nick.clone())),
            _ => None,
        })
        .collect();
    // guest-3 was taken by a rename: the next joiner is guest-4.
    assert_eq!(joined, [(1, "guest-1".into()), (2, "guest-2".into()), (4, "guest-4".into())]);
    assert_eq!(room.member_of("b", SessionId(2)), Some(MemberId(4)));
    assert_eq!(room.by_nick("GUEST-3").map(|(id, _)| id), Some(MemberId(1)));
}

#[test]
fn the_first_nick_claim_in_the_stream_wins() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("b", 2, join(7));
    s.push("b", 2, nick(7, "Bob"));
    s.push("a", 1, nick(1, "bob"));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    assert!(applied.iter().any(|a| matches!(&a.change,
        Change::Renamed { member, old, .. } if member.nick == "Bob" && old == "guest-2")));
    let refused =
        Change::NickRefused { node: "a".into(), session: SessionId(1), nick: "bob".into() };
    assert_eq!(applied.last().map(|a| &a.change), Some(&refused));
    assert_eq!(nicks(&room), [("a".into(), "guest-1".into()), ("b".into(), "Bob".into())]);
    // Once Bob is gone the nick is free again.
    s.push("b", 2, Event::Leave { session: SessionId(7), reason: LeaveReason::Quit(None) });
    s.push("a", 1, nick(1, "bob"));
    let mut room = Room::new();
    s.apply(&mut room);
    assert_eq!(nicks(&room), [("a".into(), "bob".into())]);
}

#[test]
fn events_of_unknown_sessions_and_invalid_claims_change_nothing() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, Event::Say { session: SessionId(9), text: "hi".into() });
    s.push("a", 1, Event::Leave { session: SessionId(9), reason: LeaveReason::Closed });
    s.push("a", 1, nick(9, "x"));
    s.push("a", 1, nick(1, "no spaces"));
    s.push("a", 1, nick(1, "guest-1"));
    s.push("a", 1, join(1));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(room.online(), 1);
}

#[test]
fn a_silent_host_is_declared_gone_once_and_its_later_events_are_ignored() {
    let mut s = Stream::default();
    s.push_at(1_000, "a", 1, join(1));
    s.push_at(1_000, "b", 2, join(1));
    s.push_at(1_500, "b", 2, join(2));
    s.push_at(2_000, "b", 2, Event::Beat { clients: 2 });
    // Only a goes on beating.
    for t in 3..=17 {
        s.push_at(t * 1000, "a", 1, Event::Beat { clients: 1 });
    }
    let mut room = Room::new();
    s.apply(&mut room);
    let timeout = Duration::from_secs(15);
    assert_eq!(room.overdue("a", timeout), Vec::new(), "15 s are not over yet");
    s.push_at(17_001, "a", 1, Event::Beat { clients: 1 });
    let mut room = Room::new();
    s.apply(&mut room);
    let declaration = Event::HostGone { node: "b".into(), generation: 2, last_seq: 4 };
    assert_eq!(room.overdue("a", timeout), std::slice::from_ref(&declaration));
    assert_eq!(room.overdue("b", timeout), Vec::new(), "b never declares itself");
    // a and a third host c both notice; the first declaration counts.
    s.push("c", 3, declaration.clone());
    s.push("a", 1, declaration);
    // b comes back and speaks in its old generation: ignored.
    s.push("b", 2, Event::Say { session: SessionId(1), text: "I'm back".into() });
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    let lost: Vec<(&str, String)> = applied
        .iter()
        .filter_map(|a| match &a.change {
            Change::Left { member, reason, .. } => Some((member.nick.as_str(), reason.to_string())),
            Change::HostGone { node, clean, .. } => Some((node.as_str(), format!("gone {clean}"))),
            _ => None,
        })
        .collect();
    assert_eq!(
        lost,
        [
            ("guest-2", "connection lost".into()),
            ("guest-3", "connection lost".into()),
            ("b", "gone false".into())
        ]
    );
    assert!(!applied.iter().any(|a| matches!(a.change, Change::Said { .. })));
    assert_eq!(room.hosts().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "c"]);
    // Its next life is a new generation: welcome again.
    s.push("b", 4, join(1));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    assert!(matches!(&applied.last().unwrap().change,
        Change::Joined { member, .. } if member.node == "b" && member.nick == "guest-4"));
}

#[test]
fn a_declaration_made_before_a_sign_of_life_is_stale() {
    let mut s = Stream::default();
    s.push("a", 1, Event::Beat { clients: 0 });
    let b_last = s.push("b", 2, join(1));
    // b beats again, but a declares on what it saw before that beat.
    s.push("b", 2, Event::Beat { clients: 1 });
    s.push("a", 1, Event::HostGone { node: "b".into(), generation: 2, last_seq: b_last });
    // A declaration about another generation is no declaration either.
    s.push("a", 1, Event::HostGone { node: "b".into(), generation: 9, last_seq: 100 });
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    assert_eq!(room.online_on("b"), 1);
    assert!(!applied.iter().any(|a| matches!(a.change, Change::HostGone { .. })));
}

#[test]
fn a_restarted_host_ends_its_previous_generation() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, join(2));
    s.push("a", 5, join(1));
    s.push("a", 1, Event::Say { session: SessionId(2), text: "late".into() });
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    let changes: Vec<String> = applied.iter().map(|a| describe(&a.change)).collect();
    assert_eq!(
        changes,
        [
            "joined guest-1",
            "joined guest-2",
            "left guest-1 (connection lost)",
            "left guest-2 (connection lost)",
            "host a gone",
            "joined guest-3"
        ]
    );
    assert_eq!(room.hosts().next().map(|(_, h)| h.generation), Some(5));
}

#[test]
fn a_clean_stop_retires_the_generation() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, Event::Leave { session: SessionId(1), reason: LeaveReason::Restart });
    s.push("a", 1, Event::HostDown);
    s.push("a", 1, join(2));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    assert!(matches!(&applied.last().unwrap().change, Change::HostGone { clean: true, .. }));
    assert_eq!(room.online(), 0);
    assert_eq!(room.hosts().count(), 0);
}

#[test]
fn redelivered_events_change_nothing() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, Event::Say { session: SessionId(1), text: "once".into() });
    let mut room = Room::new();
    assert_eq!(s.apply(&mut room).len(), 2);
    assert_eq!(s.apply(&mut room), Vec::new());
    assert_eq!(room.last_seq(), 2);
}

#[test]
fn packed_lines_are_applied_in_order_at_their_message_sequence_and_other_packs_are_refused() {
    let envelope = |n: u64, event: Event| Envelope { node: "a".into(), generation: 1, n, event };
    let say = |text: &str| Event::Say { session: SessionId(1), text: text.into() };
    let mut room = Room::new();
    room.apply(1, 1000, envelope(1, join(1)));
    let pack = vec![envelope(2, say("one")), envelope(3, say("two")), envelope(4, say("three"))];
    let applied = room.apply_message(2, 2000, pack.clone());
    let said: Vec<(u64, String)> = applied
        .into_iter()
        .filter_map(|a| match a.change {
            Change::Said { text, .. } => Some((a.seq, text)),
            _ => None,
        })
        .collect();
    assert_eq!(said, [(2, "one".into()), (2, "two".into()), (2, "three".into())]);
    assert!(room.apply_message(2, 2000, pack).is_empty(), "a redelivery changes nothing");
    // Two joins in one message would share a member number: the message is refused whole, on
    // every host alike, and the host's numbering waits at the gap.
    let bad = vec![envelope(5, join(2)), envelope(6, join(3))];
    assert!(room.apply_message(3, 3000, bad).is_empty());
    assert_eq!(room.online(), 1);
    assert_eq!(room.last_seq(), 3);
    let other_host = Envelope { node: "b".into(), ..envelope(5, say("four")) };
    assert!(room.apply_message(4, 4000, vec![envelope(5, say("four")), other_host]).is_empty());
}

#[test]
fn a_host_reading_a_trimmed_stream_learns_members_from_rosters() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, nick(1, "alice"));
    s.push("b", 2, join(1));
    let mut full = Room::new();
    s.apply(&mut full);
    // A host c starts; a and b publish their rosters as they see it.
    let cut = s.push("c", 3, Event::Beat { clients: 0 });
    for host in ["a", "b"] {
        for roster in full.rosters_of(host) {
            s.push(host, if host == "a" { 1 } else { 2 }, roster);
        }
    }
    s.push("c", 3, join(1));
    let mut full = Room::new();
    let full_applied = s.apply(&mut full);
    // c only has the stream from its own first event on.
    let mut late = Room::new();
    let mut learnt = Vec::new();
    for (seq, t, e) in s.events.iter().filter(|(seq, ..)| *seq >= cut) {
        learnt.extend(late.apply(*seq, *t, e.clone()).iter().map(|a| describe(&a.change)));
    }
    assert_eq!(learnt, ["learnt alice", "learnt guest-2", "joined guest-3"]);
    assert_eq!(nicks(&late), nicks(&full));
    assert_eq!(nicks(&late)[2], ("c".into(), "guest-3".into()));
    assert_eq!(
        late.members().map(|(id, _)| id).collect::<Vec<_>>(),
        [MemberId(1), MemberId(3), MemberId(7)]
    );
    // For the host that saw everything the rosters were no change.
    assert_eq!(full_applied.len(), 4);
}

#[test]
fn a_retry_stored_after_the_next_event_is_applied_before_it() {
    let say = |text: &str| Event::Say { session: SessionId(1), text: text.into() };
    let mut s = Stream::default();
    s.push_numbered("a", 1, 1, join(1));
    s.push("b", 2, join(1));
    // a's "one" (2) was lost with a dying stream leader while "two" (3) reached the new one;
    // the retry of "one" is stored after it, and after a line of b.
    let two = s.push_numbered("a", 1, 3, say("two"));
    s.push("b", 2, Event::Say { session: SessionId(1), text: "b's".into() });
    let one = s.push_numbered("a", 1, 2, say("one"));
    s.push_numbered("a", 1, 4, say("three"));
    // Stored once more past JetStream's duplicate window: already applied.
    s.push_numbered("a", 1, 2, say("one"));
    let mut room = Room::new();
    let applied = s.apply(&mut room);
    let said: Vec<(u64, String)> =
        applied.iter().map(|a| (a.seq, describe(&a.change))).skip(2).collect();
    assert_eq!(
        said,
        [
            (4, "<guest-2> b's".to_owned()),
            (one, "<guest-1> one".to_owned()),
            (two, "<guest-1> two".to_owned()),
            (6, "<guest-1> three".to_owned()),
        ]
    );
    // Another host applying the same stream agrees.
    let mut other = Room::new();
    assert_eq!(s.apply(&mut other), applied);
}

#[test]
fn a_host_met_in_the_middle_of_its_generation_starts_there() {
    let say = |text: &str| Event::Say { session: SessionId(1), text: text.into() };
    let mut s = Stream::default();
    // A trimmed stream: a's first events are gone; its roster brings the member.
    s.push_numbered("a", 1, 40, Event::Roster { members: Vec::new(), next_guest: 1 });
    s.push_numbered("a", 1, 41, join(1));
    s.push_numbered("a", 1, 42, say("hi"));
    // An event of the generation's start stored very late is applied where it is, not lost.
    s.push_numbered("a", 1, 3, say("late"));
    let mut room = Room::new();
    let said: Vec<String> = s.apply(&mut room).iter().map(|a| describe(&a.change)).collect();
    assert_eq!(said, ["joined guest-1", "<guest-1> hi", "<guest-1> late"]);
}

#[test]
fn events_waiting_for_an_earlier_one_end_with_their_generation() {
    let mut s = Stream::default();
    s.push_numbered("a", 1, 1, join(1));
    // a's 2 never came: a restarted. Its 3 is dropped with its generation.
    s.push_numbered("a", 1, 3, Event::Say { session: SessionId(1), text: "lost".into() });
    s.push("a", 2, join(1));
    let mut room = Room::new();
    let said: Vec<String> = s.apply(&mut room).iter().map(|a| describe(&a.change)).collect();
    assert_eq!(
        said,
        ["joined guest-1", "left guest-1 (connection lost)", "host a gone", "joined guest-2"]
    );
}

#[test]
fn a_large_roster_comes_in_parts_each_far_below_the_nats_payload_limit() {
    let mut s = Stream::default();
    // 10,000 members of 65 bytes in a roster: 650 KB in one message.
    let members = 10_000;
    for session in 0..members as u64 {
        s.push(
            "a",
            1,
            Event::Join {
                session: SessionId(u64::MAX - session),
                addr: "[2001:db8::1]:65535".parse().unwrap(),
            },
        );
        let nick = format!("{:x<32}", format!("n{session}"));
        s.push("a", 1, Event::Nick { session: SessionId(u64::MAX - session), nick });
    }
    let mut full = Room::new();
    s.apply(&mut full);
    let rosters = full.rosters_of("a");
    assert!(rosters.len() > 1, "in parts");
    for roster in &rosters {
        let envelope = Envelope {
            node: "a".repeat(64),
            generation: u64::MAX,
            n: u64::MAX,
            event: roster.clone(),
        };
        let size = crate::cluster::events::encode(&envelope).len();
        assert!(size < 512 * 1024, "{size} bytes");
    }
    // A room that missed every join learns every member from the parts.
    let mut late = Room::new();
    let mut seq = 1_000_000;
    for roster in rosters {
        seq += 1;
        late.apply(seq, 0, Envelope { node: "a".into(), generation: 1, n: seq, event: roster });
    }
    assert_eq!(nicks(&late), nicks(&full));
}

#[test]
fn a_host_generation_numbering_tells_its_last_event_and_a_gap() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("a", 1, nick(1, "ann"));
    let mut room = Room::new();
    s.apply(&mut room);
    let numbering =
        |last, missing: &[u64], highest| Numbering { last, missing: missing.to_vec(), highest };
    assert_eq!(room.numbering("a", 1), Some(numbering(2, &[], 2)));
    assert_eq!(room.numbering("a", 2), None, "not the host's generation");
    assert_eq!(room.numbering("b", 1), None, "not a host of the room");
    // Its fourth and sixth events stored, its third and fifth lost: those wait.
    room.apply(10, 10_000, Envelope { node: "a".into(), generation: 1, n: 4, event: join(2) });
    room.apply(11, 11_000, Envelope { node: "a".into(), generation: 1, n: 6, event: join(3) });
    assert_eq!(room.numbering("a", 1), Some(numbering(2, &[3, 5], 6)));
}

fn describe(change: &Change) -> String {
    match change {
        Change::Joined { member, .. } => format!("joined {}", member.nick),
        Change::Left { member, reason, .. } => format!("left {} ({reason})", member.nick),
        Change::Said { member, text, .. } => format!("<{}> {text}", member.nick),
        Change::Me { member, text, .. } => format!("* {} {text}", member.nick),
        Change::Renamed { member, old, .. } => format!("{old} is now {}", member.nick),
        Change::NickRefused { nick, .. } => format!("refused {nick}"),
        Change::Notice { text } => format!("notice {text}"),
        Change::Learnt { member, .. } => format!("learnt {}", member.nick),
        Change::HostGone { node, .. } => format!("host {node} gone"),
        Change::Kick { node, session, .. } => format!("kick {node} {}", session.0),
        Change::Ban { target, .. } => format!("ban {target}"),
        Change::Unban { target } => format!("unban {target}"),
    }
}

#[test]
fn a_kick_names_a_member_the_room_knows_and_bans_pass_through() {
    let mut s = Stream::default();
    s.push("a", 1, join(1));
    s.push("b", 1, Event::Kick { node: "a".into(), session: SessionId(1), reason: None });
    s.push("b", 1, Event::Kick { node: "a".into(), session: SessionId(9), reason: None });
    let target = crate::moderation::Target::parse("192.0.2.0/24").expect("target");
    s.push("b", 1, Event::Ban { target, until_ms: None, reason: None });
    s.push("a", 1, Event::Unban { target });
    let mut room = Room::new();
    let said: Vec<String> = s.apply(&mut room).iter().map(|a| describe(&a.change)).collect();
    assert_eq!(said, ["joined guest-1", "kick a 1", "ban 192.0.2.0/24", "unban 192.0.2.0/24"]);
}

/// One step of a random stream.
fn arbitrary_event() -> impl Strategy<Value = (usize, bool, Event)> {
    let session = (0u64..4).prop_map(SessionId);
    let event = prop_oneof![
        3 => session.clone().prop_map(|session| Event::Join {
            session,
            addr: "192.0.2.1:1".parse().unwrap()
        }),
        1 => session.clone().prop_map(|session| Event::Leave { session, reason: LeaveReason::Closed }),
        2 => (session.clone(), prop::sample::select(vec!["ann", "Ann", "bob", "guest-3", "x y"]))
            .prop_map(|(session, nick)| Event::Nick { session, nick: nick.into() }),
        1 => session.prop_map(|session| Event::Say { session, text: "hi".into() }),
        1 => Just(Event::Beat { clients: 0 }),
        1 => (0usize..3, 0u64..3, 0u64..40).prop_map(|(h, generation, last_seq)| Event::HostGone {
            node: HOSTS[h].into(), generation, last_seq
        }),
    ];
    // Host, whether it publishes in a new generation, the event.
    (0usize..3, prop::bool::weighted(0.05), event)
}

const HOSTS: [&str; 3] = ["a", "b", "c"];

proptest! {
    /// Two hosts applying the same stream — one of them getting some events twice, as after a
    /// reconnect — hold the same room and saw the same changes; nicks stay unique and every
    /// member's host is alive.
    #[test]
    fn hosts_applying_one_stream_agree(steps in prop::collection::vec(arbitrary_event(), 1..60)) {
        let mut generations = [0u64; 3];
        let mut s = Stream::default();
        for (host, restart, event) in steps {
            if restart {
                generations[host] += 1;
            }
            s.push(HOSTS[host], generations[host], event);
        }
        let mut one = Room::new();
        let mut two = Room::new();
        let mut seen_one = Vec::new();
        let mut seen_two = Vec::new();
        for (i, (seq, t, e)) in s.events.iter().enumerate() {
            seen_one.extend(one.apply(*seq, *t, e.clone()));
            seen_two.extend(two.apply(*seq, *t, e.clone()));
            if i % 3 == 0 {
                // A redelivery of an earlier event.
                let (seq, t, e) = &s.events[i / 2];
                seen_two.extend(two.apply(*seq, *t, e.clone()));
            }
            let mut keys: Vec<String> =
                one.members().map(|(_, m)| m.nick.to_ascii_lowercase()).collect();
            let count = keys.len();
            keys.sort();
            keys.dedup();
            prop_assert_eq!(keys.len(), count, "nicks unique");
            for (_, member) in one.members() {
                prop_assert!(one.hosts().any(|(n, _)| n == member.node));
            }
        }
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(seen_one, seen_two);
    }
}
