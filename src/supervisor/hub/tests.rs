//! The hub's state machine, driven in-process: requests in, the frames it would send out.

use super::*;
use crate::bus::ToWorker;
use crate::bus::frame::encode;

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);
const W3: WorkerId = WorkerId(3);

#[derive(Default)]
struct Recorder {
    sent: Vec<(Option<WorkerId>, RoomUpdate)>,
}

impl Outbox for Recorder {
    fn to_worker(&mut self, worker: WorkerId, msg: RoomUpdate) {
        self.sent.push((Some(worker), msg));
    }
    fn to_all(&mut self, msg: RoomUpdate) {
        self.sent.push((None, msg));
    }
}

fn hub(edit: impl FnOnce(&mut Config)) -> Hub {
    let mut config = Config::default();
    edit(&mut config);
    Hub::new(&config)
}

fn admit(hub: &mut Hub, worker: WorkerId, port: u16) -> (SessionId, Recorder) {
    let mut out = Recorder::default();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    hub.handle(worker, RoomRequest::Join { conn: ConnId(u64::from(port)), addr }, &mut out);
    let session = out
        .sent
        .iter()
        .find_map(|(_, m)| match m {
            RoomUpdate::Admitted { session, .. } => Some(*session),
            _ => None,
        })
        .expect("admitted");
    (session, out)
}

fn room_lines(out: &Recorder) -> Vec<(u64, String)> {
    out.sent
        .iter()
        .filter_map(|(_, m)| match m {
            RoomUpdate::Line { seq, line, .. } => Some((*seq, line.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn join_welcomes_and_announces_to_others() {
    let mut hub = hub(|_| {});
    let (first, _) = admit(&mut hub, W0, 1000);
    let (second, out) = admit(&mut hub, W1, 1001);
    assert_ne!(first, second);
    match &out.sent[0] {
        (Some(W1), RoomUpdate::Admitted { welcome, .. }) => assert_eq!(
            welcome,
            "* Welcome to chatd. You are guest-2. 2 online. Type /help for commands."
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        out.sent[1].1,
        RoomUpdate::Line {
            seq: 2,
            skip: Some(second),
            line: "* guest-2 joined (2 online)".into(),
            event: RoomEvent::Join { session: second, nick: "guest-2".into() },
        }
    );
}

#[test]
fn nicknames_are_unique_case_insensitively() {
    let mut hub = hub(|_| {});
    let (a, _) = admit(&mut hub, W0, 1);
    let (b, _) = admit(&mut hub, W1, 2);
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Nick { session: a, nick: "Alice".into() }, &mut out);
    assert_eq!(room_lines(&out)[0].1, "* guest-1 is now known as Alice");
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Nick { session: b, nick: "alice".into() }, &mut out);
    assert_eq!(
        out.sent,
        vec![(
            Some(W1),
            RoomUpdate::Direct { session: b, lines: vec!["! nickname 'alice' is taken".into()] }
        )]
    );
    // The freed name can be taken after its owner leaves.
    hub.handle(W0, RoomRequest::Leave { session: a, reason: LeaveReason::Closed }, &mut out);
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Nick { session: b, nick: "alice".into() }, &mut out);
    assert_eq!(room_lines(&out)[0].1, "* guest-2 is now known as alice");
}

#[test]
fn limits_are_room_wide() {
    let mut hub = hub(|c| {
        c.server.max_clients = 3;
        c.server.max_clients_per_ip = 2;
    });
    admit(&mut hub, W0, 1);
    admit(&mut hub, W1, 2);
    let mut out = Recorder::default();
    hub.handle(
        W2,
        RoomRequest::Join { conn: ConnId(9), addr: "127.0.0.1:3".parse().unwrap() },
        &mut out,
    );
    assert_eq!(
        out.sent,
        vec![(
            Some(W2),
            RoomUpdate::Refused {
                conn: ConnId(9),
                line: "! too many connections from your address".into()
            }
        )]
    );
    let mut out = Recorder::default();
    hub.handle(
        W2,
        RoomRequest::Join { conn: ConnId(10), addr: "127.0.0.2:3".parse().unwrap() },
        &mut out,
    );
    assert!(matches!(out.sent[0].1, RoomUpdate::Admitted { .. }));
    let mut out = Recorder::default();
    hub.handle(
        W2,
        RoomRequest::Join { conn: ConnId(11), addr: "127.0.0.3:3".parse().unwrap() },
        &mut out,
    );
    assert_eq!(
        out.sent,
        vec![(Some(W2), RoomUpdate::Refused { conn: ConnId(11), line: "! server full".into() })]
    );
}

#[test]
fn worker_loss_announces_its_members_in_order() {
    let mut hub = hub(|_| {});
    admit(&mut hub, W0, 1);
    admit(&mut hub, W1, 2);
    admit(&mut hub, W1, 3);
    let mut out = Recorder::default();
    hub.worker_lost(W1, &mut out);
    let lines: Vec<String> = room_lines(&out).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, vec!["* guest-2 left (connection lost)", "* guest-3 left (connection lost)"]);
    assert_eq!(hub.online(), 1);
    assert_eq!(hub.online_on(W1), 0);
}

#[test]
fn chat_history_and_private_messages() {
    let mut hub = hub(|c| c.chat.time_format = "T".into());
    let (a, _) = admit(&mut hub, W0, 1);
    let (b, _) = admit(&mut hub, W1, 2);
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Say { session: a, text: "hello".into() }, &mut out);
    hub.handle(W0, RoomRequest::Me { session: a, text: "waves".into() }, &mut out);
    assert_eq!(
        room_lines(&out),
        vec![(3, "T <guest-1> hello".into()), (4, "T * guest-1 waves".into())]
    );
    let mut out = Recorder::default();
    hub.handle(
        W1,
        RoomRequest::Msg { session: b, to: "GUEST-1".into(), text: "psst".into() },
        &mut out,
    );
    assert_eq!(
        out.sent,
        vec![
            (
                Some(W0),
                RoomUpdate::Direct { session: a, lines: vec!["T [pm from guest-2] psst".into()] }
            ),
            (
                Some(W1),
                RoomUpdate::Direct { session: b, lines: vec!["T [pm to guest-1] psst".into()] }
            ),
        ]
    );
}

fn snapshot(hub: &Hub) -> (u64, Vec<(SessionId, String)>, Vec<String>, usize) {
    let mut out = Recorder::default();
    hub.sync(W3, &mut out);
    let (mut seq, mut members, mut history) = (0, Vec::new(), Vec::new());
    for (_, msg) in &out.sent {
        match msg {
            RoomUpdate::Sync { seq: s } => seq = *s,
            RoomUpdate::Snapshot { members: m, history: h } => {
                members.extend(m.iter().cloned());
                history.extend(h.iter().cloned());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (seq, members, history, out.sent.len())
}

#[test]
fn history_keeps_talk_unless_all_events_are_asked_for() {
    for (events, expected) in [
        (HistoryEvents::Chat, vec!["T <guest-1> hi", "T * guest-1 waves"]),
        (
            HistoryEvents::All,
            vec![
                "* guest-1 joined (1 online)",
                "T <guest-1> hi",
                "* guest-2 joined (2 online)",
                "* guest-2 left (connection closed)",
                "T * guest-1 waves",
            ],
        ),
    ] {
        let mut hub = hub(|c| {
            c.chat.time_format = "T".into();
            c.chat.history_events = events;
        });
        let (a, _) = admit(&mut hub, W0, 1);
        let mut out = Recorder::default();
        hub.handle(W0, RoomRequest::Say { session: a, text: "hi".into() }, &mut out);
        let (b, _) = admit(&mut hub, W0, 2);
        hub.handle(W0, RoomRequest::Leave { session: b, reason: LeaveReason::Closed }, &mut out);
        hub.handle(W0, RoomRequest::Me { session: a, text: "waves".into() }, &mut out);
        let (seq, members, history, _) = snapshot(&hub);
        assert_eq!(seq, 5);
        assert_eq!(members, vec![(a, "guest-1".to_string())]);
        assert_eq!(history, expected);
    }
}

#[test]
fn a_new_worker_gets_a_large_room_in_bounded_frames() {
    let mut hub = hub(|c| c.chat.history = 100_000);
    let (a, _) = admit(&mut hub, W0, 1);
    let mut out = Recorder::default();
    let text = "x".repeat(1000);
    for _ in 0..20_000 {
        hub.handle(W0, RoomRequest::Say { session: a, text: text.clone() }, &mut out);
    }
    let mut out = Recorder::default();
    hub.sync(W1, &mut out);
    let mut total = 0;
    for (_, msg) in &out.sent {
        let frame = encode(&ToWorker::Room(msg.clone())).expect("every frame fits");
        assert!(frame.len() <= 2 * LINES_PER_FRAME_BYTES);
        if let RoomUpdate::Snapshot { history, .. } = msg {
            total += history.len();
        }
    }
    assert_eq!(total, 20_000);
    assert!(out.sent.len() > 10);
}

#[test]
fn a_long_replay_is_split_and_ends_with_resume() {
    let mut hub = hub(|_| {});
    let (a, _) = admit(&mut hub, W0, 1);
    let (b, _) = admit(&mut hub, W0, 2);
    let mut out = Recorder::default();
    let text = "y".repeat(1000);
    for _ in 0..5_000 {
        hub.handle(W0, RoomRequest::Say { session: a, text: text.clone() }, &mut out);
    }
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Adopt { session: b, last_seq: 2 }, &mut out);
    let mut lines = 0;
    for (i, (_, msg)) in out.sent.iter().enumerate() {
        let last = i + 1 == out.sent.len();
        match msg {
            RoomUpdate::Replay { lines: l, .. } if !last => lines += l.len(),
            RoomUpdate::Resume { lines: l, .. } if last => lines += l.len(),
            other => panic!("unexpected {other:?} at {i}"),
        }
        assert!(encode(&ToWorker::Room(msg.clone())).is_ok());
    }
    assert!(out.sent.len() > 1);
    assert_eq!(lines, 5_000);
}
