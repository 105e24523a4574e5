use super::super::hub::tests::{Recorder, admit, hub};
use super::*;
use crate::bus::RoomRequest;
use crate::bus::message::LeaveReason;
use crate::bus::message::SessionId;
use crate::config::Config;
use crate::supervisor::WorkerId;

/// A room written as under systemd, without systemd.
fn room() -> StoredRoom {
    let snapshot = Snapshot::create("test").unwrap();
    let journal = Journal::create("test").unwrap();
    StoredRoom { snapshot, journal, seq: None, pushed: 0, bans: 0, presence: 0, cluster: None }
}

fn stored(room: &StoredRoom) -> Vec<OwnedFd> {
    let [a, b] = room.snapshot.files();
    [a, b, room.journal.file()].iter().map(|f| f.try_clone().unwrap().into()).collect()
}

fn say(hub: &mut Hub, session: SessionId, text: &str) {
    let req = RoomRequest::Say { session, text: text.into() };
    hub.handle(WorkerId(0), req, &mut Recorder::default());
}

#[test]
fn turns_append_what_they_changed_and_a_restart_reads_snapshot_and_journal() {
    let mut hub = hub(|_| {});
    let mut room = room();
    let (alice, _) = admit(&mut hub, WorkerId(0), 1000);
    room.save(&hub);
    for text in ["one", "two", "three"] {
        say(&mut hub, alice, text);
        room.save(&hub);
    }
    room.save(&hub);
    assert_eq!(room.snapshot.version(), 1, "one snapshot, then only journal entries");
    assert!(room.journal.bytes() > 0);
    let back = take_room(stored(&room)).expect("a room").hub;
    assert_eq!(back.seq, hub.seq());
    assert_eq!(back.history, hub.save().history);
    assert_eq!(back.events.len(), 4);
    assert_eq!(back.events.last().map(|e| e.seq), Some(hub.seq()));
    assert_eq!(back.next_guest, 2);
}

#[test]
fn a_long_journal_or_a_ban_writes_the_whole_room_again() {
    let mut hub = hub(|_| {});
    let mut room = room();
    let (alice, _) = admit(&mut hub, WorkerId(0), 1000);
    room.save(&hub);
    let long = "x".repeat(400);
    while room.snapshot.version() == 1 {
        say(&mut hub, alice, &long);
        room.save(&hub);
    }
    assert!(room.journal.bytes() < 4096, "the journal starts over after a snapshot");
    let target = crate::moderation::Target::parse("192.0.2.0/24").expect("target");
    hub.ban(crate::moderation::Ban { target, until: None, reason: None }, &mut Recorder::default());
    room.save(&hub);
    assert_eq!(room.snapshot.version(), 3, "a ban alone is written");
    let back = take_room(stored(&room)).expect("a room").hub;
    assert_eq!(back.bans.len(), 1);
    assert_eq!(back.history, hub.save().history);
}

#[test]
fn a_journal_that_follows_an_older_snapshot_is_not_applied() {
    let mut hub = hub(|_| {});
    let mut room = room();
    let (alice, _) = admit(&mut hub, WorkerId(0), 1000);
    room.save(&hub);
    say(&mut hub, alice, "in the journal");
    room.save(&hub);
    // A crash after the next snapshot was written and before its journal started over.
    room.snapshot.write(&encode(hub.save_recent(EVENTS, HISTORY), None)).unwrap();
    let back = take_room(stored(&room)).expect("a room").hub;
    assert_eq!(back.history, vec![hub.save().history[0].clone()], "applied twice");
    // And a snapshot torn by the crash: the older one and its journal.
    let mut room = self::room();
    room.save(&hub);
    say(&mut hub, alice, "after");
    room.save(&hub);
    // A crash in the middle of writing the next snapshot, over the other file.
    room.snapshot.write(&encode(hub.save_recent(EVENTS, HISTORY), None)).unwrap();
    let [torn, _] = room.snapshot.files();
    std::os::unix::fs::FileExt::write_all_at(torn, b"torn", 40).unwrap();
    let back = take_room(stored(&room)).expect("a room").hub;
    assert_eq!(back.seq, hub.seq());
    assert_eq!(back.history.len(), 2);
}

fn passed(payloads: &[&[u8]]) -> Vec<OwnedFd> {
    let mut snapshot = Snapshot::create("test").unwrap();
    for p in payloads {
        snapshot.write(p).unwrap();
    }
    snapshot.files().iter().map(|f| f.try_clone().unwrap().into()).collect()
}

#[test]
fn joins_leaves_and_nicks_go_into_the_journal_not_into_snapshots() {
    let mut hub = hub(|_| {});
    let mut room = room();
    room.save(&hub);
    let mut sessions = Vec::new();
    for port in 0..300 {
        sessions.push(admit(&mut hub, WorkerId(port % 2), 1000 + port as u16).0);
        room.save(&hub);
    }
    let req = RoomRequest::Nick { session: sessions[200], nick: "alice".into() };
    hub.handle(WorkerId(1), req, &mut Recorder::default());
    room.save(&hub);
    for session in &sessions[..100] {
        let req = RoomRequest::Leave { session: *session, reason: LeaveReason::Closed };
        hub.handle(WorkerId(0), req, &mut Recorder::default());
        room.save(&hub);
    }
    assert_eq!(room.snapshot.version(), 1, "presence changes were written as snapshots");
    let back = take_room(stored(&room)).expect("a room").hub;
    assert_eq!(back.members.len(), 200);
    let mut now = hub.save().members;
    now.iter_mut().for_each(|m| m.age_ms = 0);
    let mut restored = back.members;
    restored.iter_mut().for_each(|m| m.age_ms = 0);
    assert_eq!(format!("{restored:?}"), format!("{now:?}"));
    assert!(restored.iter().any(|m| m.nick == "alice"));
}

#[test]
fn the_room_comes_back_with_its_members() {
    let mut saved = Hub::new(&Config::default()).save();
    saved.seq = 42;
    saved.next_guest = 7;
    saved.history = vec!["12:00 <alice> hello".into()];
    let members = saved.members.len();
    let back = take_room(passed(&[&encode(saved, None)])).expect("a room").hub;
    assert_eq!((back.seq, back.next_guest), (42, 7));
    assert_eq!(back.history, vec!["12:00 <alice> hello".to_string()]);
    assert_eq!(back.members.len(), members);
}

#[test]
fn a_newer_format_or_garbage_starts_an_empty_room() {
    let saved = Hub::new(&Config::default()).save();
    let newer = String::from_utf8(encode(saved, None))
        .unwrap()
        .replace(&format!("\"version\":{VERSION}"), "\"version\":99");
    assert!(take_room(passed(&[newer.as_bytes()])).is_none());
    assert!(take_room(passed(&[b"not json"])).is_none());
    assert!(take_room(passed(&[])).is_none());
    assert!(take_room(Vec::new()).is_none());
}

#[test]
fn a_room_stored_in_cluster_mode_goes_on_only_as_the_same_node_of_the_same_room() {
    let stored = |node: &str| {
        let cluster = StoredCluster {
            node: node.into(),
            room: "main".into(),
            mode: vec![1, 2, 3],
            unstored: vec![4],
        };
        let bytes = encode(Hub::new(&Config::default()).save(), Some(cluster));
        take_room(passed(&[&bytes])).expect("a room")
    };
    let mut config = Config::default();
    config.cluster.enabled = true;
    config.cluster.node = "h0".into();
    let (hub, mode) = usable(Some(stored("h0")), &config);
    assert!(hub.is_some());
    let mode = mode.expect("the door's part");
    assert_eq!((mode.mode, mode.unstored), (vec![1, 2, 3], vec![4]));
    let (hub, mode) = usable(Some(stored("h1")), &config);
    assert!(hub.is_none() && mode.is_none(), "another node");
    config.cluster.room = "other".into();
    assert_eq!(usable(Some(stored("h0")), &config).1, None, "another room");
    config.cluster.enabled = false;
    assert!(usable(Some(stored("h0")), &config).0.is_none(), "not in cluster mode");
    let single = take_room(passed(&[&encode(Hub::new(&config).save(), None)]));
    assert!(usable(single, &config).0.is_some(), "a single host's room on a single host");
}
