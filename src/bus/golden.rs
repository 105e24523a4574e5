//! Golden bytes of every bus and hand-off message.
//!
//! Workers of one release meet a supervisor (and a predecessor) of another during a rolling
//! reload; they only refuse each other when the frame or hand-off version differs. So a change
//! of any message's shape must come with a version bump, and these tests make that impossible
//! to forget: they fail on any change of the encoding, and the fix is to bump
//! [`super::frame::VERSION`] (bus messages) or [`super::handoff::VERSION`] (hand-off records)
//! and then update the bytes here.

use super::frame::{VERSION, encode};
use super::handoff::{self, SessionState, Transfer};
use super::message::{LeaveReason, Query, RoomEvent, ToHub, ToWorker};
use crate::protocol::decoder::LineDecoder;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares each message's encoding (hex of the frame without its length) with the expected
/// one, and reports every change at once.
#[derive(Default)]
struct Golden {
    changed: Vec<String>,
}

impl Golden {
    fn check<T: serde::Serialize + std::fmt::Debug>(&mut self, msg: &T, expected: &str) {
        let frame = encode(msg).expect("small messages fit");
        let got = hex(&frame[4..]);
        if got != expected {
            self.changed.push(format!("{msg:?}\n    now {got}"));
        }
    }

    fn verify(self, version: u32) {
        assert!(
            self.changed.is_empty(),
            "message encodings changed: bump the version (now {version}) and update the bytes \
             here:\n{}",
            self.changed.join("\n")
        );
    }
}

#[test]
fn bus_messages_keep_their_bytes() {
    assert_eq!(VERSION, 2, "the version changed: update the golden bytes below");
    let mut g = Golden::default();
    let hello = ToHub::Hello { slot: 1, pid: 2, generation: 3, handoff: 4, version: "0.1".into() };
    g.check(&hello, "02000102030403302e31");
    g.check(&ToHub::Heartbeat, "0201");
    g.check(&ToHub::Join { conn: 5, addr: "127.0.0.1:9".parse().unwrap() }, "020205007f00000109");
    g.check(&ToHub::Say { session: 6, text: "hi".into() }, "020306026869");
    g.check(
        &ToHub::Leave { session: 7, reason: LeaveReason::Quit(Some("b".into())) },
        "02080700010162",
    );
    g.check(&ToHub::Adopt { session: 8, last_seq: 9 }, "020a0809");
    g.check(&ToHub::Draining, "020b");
    g.check(&ToHub::Query { session: 5, query: Query::History(Some(3)) }, "020705010103");
    g.check(&ToWorker::Answer { session: 5, query: Query::Who }, "020d0500");
    let room = ToWorker::Room {
        seq: 10,
        skip: Some(11),
        line: "l".into(),
        event: RoomEvent::Nick { session: 11, nick: "n".into() },
    };
    g.check(&room, "02050a010b016c040b016e");
    g.check(
        &ToWorker::Snapshot { members: vec![(1, "a".into())], history: vec!["h".into()] },
        "020201010161010168",
    );
    g.check(&ToWorker::Admitted { conn: 1, session: 2, welcome: "w".into() }, "020301020177");
    g.check(&ToWorker::Replay { session: 3, lines: vec!["r".into()] }, "020c03010172");
    g.check(&ToWorker::Resume { session: 3, lines: Vec::new() }, "020b0300");
    g.verify(u32::from(VERSION));
}

#[test]
fn handoff_records_keep_their_bytes() {
    assert_eq!(handoff::VERSION, 1, "the version changed: update the golden bytes below");
    let mut g = Golden::default();
    let state = SessionState {
        session: 1,
        decoder: LineDecoder::new(16),
        output: b"o".to_vec(),
        mid_line: true,
        last_seq: 2,
        tokens: Some(1.5),
        idle_ms: 3,
        leaving: false,
        eof: false,
    };
    g.check(&Transfer::Session(state), "0200011000000000016f010201000000000000f83f030000");
    g.check(&Transfer::Left { session: 4 }, "020204");
    g.verify(handoff::VERSION);
}
