//! The hub's state machine, driven in-process: requests in, the frames it would send out.

use super::*;
use crate::bus::ToWorker;
use crate::bus::frame::encode;
use crate::bus::message::Query;

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);
const W3: WorkerId = WorkerId(3);

#[derive(Default)]
pub(in crate::supervisor) struct Recorder {
    pub(in crate::supervisor) sent: Vec<(Option<WorkerId>, RoomUpdate)>,
}

impl Outbox for Recorder {
    fn to_worker(&mut self, worker: WorkerId, msg: RoomUpdate) {
        self.sent.push((Some(worker), msg));
    }
    fn to_all(&mut self, msg: RoomUpdate) {
        self.sent.push((None, msg));
    }
}

pub(in crate::supervisor) fn hub(edit: impl FnOnce(&mut Config)) -> Hub {
    let mut config = Config::default();
    edit(&mut config);
    Hub::new(&config)
}

pub(in crate::supervisor) fn admit(
    hub: &mut Hub,
    worker: WorkerId,
    port: u16,
) -> (SessionId, Recorder) {
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

pub(super) fn room_lines(out: &Recorder) -> Vec<(u64, String)> {
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

fn said(hub: &mut Hub, worker: WorkerId, session: SessionId, text: &str) -> Recorder {
    let mut out = Recorder::default();
    hub.handle(worker, RoomRequest::Say { session, text: text.into() }, &mut out);
    out
}

#[test]
fn sequence_numbers_are_one_order_for_every_worker() {
    let mut hub = hub(|c| c.chat.time_format = "T".into());
    let (a, _) = admit(&mut hub, W0, 1);
    let (b, _) = admit(&mut hub, W1, 2);
    let mut seqs = Vec::new();
    for (worker, session) in [(W1, b), (W0, a), (W1, b)] {
        let out = said(&mut hub, worker, session, "x");
        // Every room line goes to all workers at once, never to one of them.
        assert!(out.sent.iter().all(|(to, _)| to.is_none()), "{:?}", out.sent);
        seqs.extend(room_lines(&out).into_iter().map(|(seq, _)| seq));
    }
    assert_eq!(seqs, vec![3, 4, 5]);
}

#[test]
fn echo_off_skips_the_sender_and_only_the_sender() {
    for echo in [false, true] {
        let mut hub = hub(|c| c.chat.echo = echo);
        let (a, _) = admit(&mut hub, W0, 1);
        let out = said(&mut hub, W0, a, "hi");
        let skip = (!echo).then_some(a);
        assert!(
            matches!(&out.sent[..], [(None, RoomUpdate::Line { skip: s, .. })] if *s == skip),
            "echo {echo}: {:?}",
            out.sent
        );
    }
}

#[test]
fn requests_of_unknown_sessions_are_ignored() {
    let mut hub = hub(|_| {});
    let ghost = SessionId(99);
    let mut out = Recorder::default();
    for request in [
        RoomRequest::Say { session: ghost, text: "x".into() },
        RoomRequest::Me { session: ghost, text: "x".into() },
        RoomRequest::Nick { session: ghost, nick: "x".into() },
        RoomRequest::Msg { session: ghost, to: "x".into(), text: "x".into() },
        RoomRequest::Query { session: ghost, query: Query::Who },
        RoomRequest::Leave { session: ghost, reason: LeaveReason::Closed },
    ] {
        hub.handle(W0, request, &mut out);
    }
    assert_eq!(out.sent, Vec::new());
    assert_eq!(hub.online(), 0);
}

#[test]
fn leaving_confirms_to_the_worker_and_frees_the_nick_and_the_address() {
    let mut hub = hub(|c| c.server.max_clients_per_ip = 1);
    let (a, _) = admit(&mut hub, W0, 1);
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Nick { session: a, nick: "ann".into() }, &mut out);
    let mut out = Recorder::default();
    let reason = LeaveReason::Quit(Some("bye".into()));
    hub.handle(W0, RoomRequest::Leave { session: a, reason }, &mut out);
    assert_eq!(
        out.sent,
        vec![
            (
                None,
                RoomUpdate::Line {
                    seq: 3,
                    skip: Some(a),
                    line: "* ann left (quit: bye)".into(),
                    event: RoomEvent::Leave { session: a },
                }
            ),
            (Some(W0), RoomUpdate::Left { session: a }),
            (
                Some(W0),
                RoomUpdate::Log { line: "disconnect ann 127.0.0.1:1 (quit: bye) after 0s".into() }
            ),
        ]
    );
    // The same address may come back, and the nick is free again.
    let (b, _) = admit(&mut hub, W1, 1);
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Nick { session: b, nick: "ANN".into() }, &mut out);
    assert_eq!(room_lines(&out)[0].1, "* guest-2 is now known as ANN");
}

#[test]
fn guest_numbers_skip_names_taken_by_hand() {
    let mut hub = hub(|_| {});
    let (a, _) = admit(&mut hub, W0, 1);
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Nick { session: a, nick: "Guest-2".into() }, &mut out);
    let (_, out) = admit(&mut hub, W0, 2);
    assert!(room_lines(&out)[0].1.starts_with("* guest-3 joined"), "{:?}", room_lines(&out));
}

#[test]
fn nick_errors_go_to_the_asker_only() {
    let mut hub = hub(|_| {});
    let (a, _) = admit(&mut hub, W2, 1);
    for (nick, error) in
        [("no spaces", "! invalid nickname"), ("guest-1", "* you are already guest-1")]
    {
        let mut out = Recorder::default();
        hub.handle(W2, RoomRequest::Nick { session: a, nick: nick.into() }, &mut out);
        match &out.sent[..] {
            [(Some(W2), RoomUpdate::Direct { session, lines })] => {
                assert_eq!(*session, a);
                assert!(lines[0].starts_with(error), "{nick}: {lines:?}");
            }
            other => panic!("{nick}: {other:?}"),
        }
    }
    let mut out = Recorder::default();
    hub.handle(
        W2,
        RoomRequest::Msg { session: a, to: "nobody".into(), text: "x".into() },
        &mut out,
    );
    assert_eq!(
        out.sent,
        vec![(
            Some(W2),
            RoomUpdate::Direct { session: a, lines: vec!["! no such nick 'nobody'".into()] }
        )]
    );
}

#[test]
fn adopt_routes_the_session_and_replays_only_what_it_missed() {
    let mut hub = hub(|c| c.chat.time_format = "T".into());
    let (a, _) = admit(&mut hub, W0, 1);
    let (b, _) = admit(&mut hub, W0, 2);
    said(&mut hub, W0, a, "seen");
    let seen = hub.seq;
    said(&mut hub, W0, a, "missed");
    // `b`'s own line skips it: not replayed to it either.
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Say { session: b, text: "mine".into() }, &mut out);
    hub.handle(W0, RoomRequest::Me { session: b, text: "waves".into() }, &mut out);

    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Adopt { session: b, last_seq: seen }, &mut out);
    let expected = vec!["T <guest-1> missed", "T <guest-2> mine", "T * guest-2 waves"];
    let expected: Vec<String> = expected.into_iter().map(String::from).collect();
    assert_eq!(out.sent, vec![(Some(W1), RoomUpdate::Resume { session: b, lines: expected })]);
    assert_eq!((hub.online_on(W0), hub.online_on(W1)), (1, 1));

    // From now on, what is for `b` goes to its new worker.
    let mut out = Recorder::default();
    hub.handle(
        W0,
        RoomRequest::Msg { session: a, to: "guest-2".into(), text: "psst".into() },
        &mut out,
    );
    assert_eq!(out.sent[0].0, Some(W1));
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Query { session: b, query: Query::History(Some(2)) }, &mut out);
    assert_eq!(
        out.sent,
        vec![(Some(W1), RoomUpdate::Answer { session: b, query: Query::History(Some(2)) })]
    );
    // Losing the old worker no longer takes `b` with it.
    let mut out = Recorder::default();
    hub.worker_lost(W0, &mut out);
    assert_eq!(hub.online(), 1);
    assert_eq!(room_lines(&out).len(), 1);
}

#[test]
fn a_session_that_left_while_moving_still_gets_its_resume() {
    let mut hub = hub(|_| {});
    let (a, _) = admit(&mut hub, W0, 1);
    let mut out = Recorder::default();
    hub.handle(W0, RoomRequest::Leave { session: a, reason: LeaveReason::Closed }, &mut out);
    let mut out = Recorder::default();
    hub.handle(W1, RoomRequest::Adopt { session: a, last_seq: 0 }, &mut out);
    assert_eq!(out.sent, vec![(Some(W1), RoomUpdate::Resume { session: a, lines: Vec::new() })]);
}

#[test]
fn reconfigure_keeps_the_room_and_trims_the_history() {
    let mut hub = hub(|c| {
        c.chat.time_format = "T".into();
        c.chat.history = 10;
    });
    let (a, _) = admit(&mut hub, W0, 1);
    for i in 0..5 {
        said(&mut hub, W0, a, &i.to_string());
    }
    let mut config = Config::default();
    config.chat.time_format = "T".into();
    config.chat.history = 2;
    config.server.name = "renamed".into();
    hub.reconfigure(&config);
    let (seq, members, history, _) = snapshot(&hub);
    assert_eq!(seq, 6);
    assert_eq!(members.len(), 1);
    assert_eq!(history, vec!["T <guest-1> 3", "T <guest-1> 4"]);
    let (_, out) = admit(&mut hub, W1, 2);
    match &out.sent[0] {
        (_, RoomUpdate::Admitted { welcome, .. }) => {
            assert!(welcome.starts_with("* Welcome to renamed. You are guest-2."), "{welcome}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn counts_lines_departures_and_refusals_for_the_metrics() {
    use crate::metrics::{Disconnect, LineKind, Rejection};
    let mut hub = hub(|c| {
        c.server.max_clients = 3;
        c.server.max_clients_per_ip = 2;
    });
    let mut out = Recorder::default();
    let (a, _) = admit(&mut hub, W0, 1000);
    let (b, _) = admit(&mut hub, W1, 1001);
    hub.handle(W0, RoomRequest::Say { session: a, text: "hi".into() }, &mut out);
    hub.handle(W0, RoomRequest::Me { session: a, text: "waves".into() }, &mut out);
    hub.handle(W1, RoomRequest::Nick { session: b, nick: "bob".into() }, &mut out);
    let other_ip = SocketAddr::from(([127, 0, 0, 2], 1));
    hub.handle(
        W0,
        RoomRequest::Join { conn: ConnId(7), addr: "127.0.0.1:2".parse().unwrap() },
        &mut out,
    );
    hub.handle(W0, RoomRequest::Join { conn: ConnId(8), addr: other_ip }, &mut out);
    hub.handle(W0, RoomRequest::Join { conn: ConnId(9), addr: other_ip }, &mut out);
    hub.handle(W0, RoomRequest::Leave { session: a, reason: LeaveReason::Idle }, &mut out);
    hub.worker_lost(W1, &mut out);
    let c = hub.counters();
    let lines: Vec<u64> = LineKind::ALL.iter().map(|&k| c.lines_of(k)).collect();
    // chat, me, join (a, b and the one from 127.0.0.2), leave (a, b), nick, notice
    assert_eq!(lines, [1, 1, 3, 2, 1, 0]);
    assert_eq!(c.rejected_for(Rejection::PerIp), 1);
    assert_eq!(c.rejected_for(Rejection::Full), 1);
    assert_eq!(c.disconnections_for(Disconnect::Idle), 1);
    assert_eq!(c.disconnections_for(Disconnect::Lost), 1);
    assert_eq!(c.disconnections_for(Disconnect::Quit), 0);
    assert_eq!(hub.history_len(), 2);
    assert_eq!(hub.online_by_worker(), HashMap::from([(W0, 1)]));
}

#[test]
fn audit_lines_go_to_the_serving_worker_unless_turned_off() {
    let logs = |out: &Recorder| -> Vec<(Option<WorkerId>, String)> {
        out.sent
            .iter()
            .filter_map(|(w, m)| match m {
                RoomUpdate::Log { line } => Some((*w, line.clone())),
                _ => None,
            })
            .collect()
    };
    let mut room = hub(|_| {});
    let (a, out) = admit(&mut room, W1, 7);
    assert_eq!(logs(&out), [(Some(W1), "connect 127.0.0.1:7 as guest-1".to_string())]);
    let mut out = Recorder::default();
    room.handle(W1, RoomRequest::Nick { session: a, nick: "alice".into() }, &mut out);
    assert_eq!(logs(&out), [(Some(W1), "nick guest-1 -> alice (127.0.0.1:7)".to_string())]);
    // A lost worker cannot log its sessions' end: the supervisor does, and sends nothing.
    let mut out = Recorder::default();
    room.worker_lost(W1, &mut out);
    assert!(logs(&out).is_empty());

    let mut quiet = hub(|c| c.log.connections = false);
    let (b, out) = admit(&mut quiet, W0, 8);
    let mut rest = Recorder::default();
    quiet.handle(W0, RoomRequest::Leave { session: b, reason: LeaveReason::Closed }, &mut rest);
    assert!(logs(&out).is_empty() && logs(&rest).is_empty());
}
