//! Golden bytes of every bus and hand-off message.
//!
//! Workers of one release meet a supervisor (and a predecessor) of another during a rolling
//! reload; they only refuse each other when the frame or hand-off version differs. So a change
//! of any message's shape must come with a version bump, and these tests make that impossible
//! to forget: they fail on any change of the encoding, and the fix is to bump
//! [`super::frame::VERSION`] (bus messages) or [`super::handoff::VERSION`] (hand-off records)
//! and then update the bytes here.
//!
//! Every variant of every enum that travels has its example here, and the tests check that
//! none is missing: a new variant without golden bytes fails too.

use super::frame::{VERSION, encode};
use super::handoff::{self, SessionState, Transfer, TransportState};
use super::message::{
    ConnId, KeptFile, LeaveReason, Query, RoomEvent, RoomRequest, RoomUpdate, SessionId,
    SessionLoad, ToHub, ToWorker, WorkerCounters, WorkerOrder, WorkerReport,
};
use crate::listener::Kind;
use crate::protocol::decoder::{Decoded, PendingInput};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The number of variants of the enum `T`, found by asking its deserializer: a valid variant
/// index alone decodes (unit variant) or asks for more bytes; the first invalid one is refused.
fn variant_count<T: DeserializeOwned>() -> u8 {
    (0..127)
        .find(|&i| match postcard::from_bytes::<T>(&[i]) {
            Ok(_) | Err(postcard::Error::DeserializeUnexpectedEnd) => false,
            Err(_) => true,
        })
        .expect("fewer than 127 variants")
}

/// Compares each message's encoding (hex of the frame without its length) with the expected
/// one, reports every change at once, and records which variants the examples cover.
#[derive(Default)]
struct Golden {
    changed: Vec<String>,
    /// Variant indexes seen, by enum.
    seen: BTreeMap<&'static str, BTreeSet<u8>>,
}

impl Golden {
    fn compare(&mut self, what: &dyn Debug, got: String, expected: &str) {
        if got != expected {
            self.changed.push(format!("{what:?}\n    now {got}"));
        }
    }

    /// Records the variant of `value`: an enum's encoding starts with its variant index.
    fn saw<T: Serialize>(&mut self, value: &T) {
        let bytes = postcard::to_allocvec(value).expect("serializes");
        self.seen.entry(std::any::type_name::<T>()).or_default().insert(bytes[0]);
    }

    fn frame<T: Serialize + Debug>(&mut self, msg: &T, expected: &str) {
        self.saw(msg);
        let frame = encode(msg).expect("small messages fit");
        self.compare(msg, hex(&frame[4..]), expected);
    }

    fn hub_frame(&mut self, msg: ToHub, expected: &str) {
        match &msg {
            ToHub::Control(m) => self.saw(m),
            ToHub::Room(m) => self.saw(m),
        }
        self.frame(&msg, expected);
    }

    fn worker_frame(&mut self, msg: ToWorker, expected: &str) {
        match &msg {
            ToWorker::Control(m) => self.saw(m),
            ToWorker::Room(m) => self.saw(m),
        }
        self.frame(&msg, expected);
    }

    /// A part of messages, on its own (postcard bytes, no frame).
    fn part<T: Serialize + Debug>(&mut self, value: T, expected: &str) {
        self.saw(&value);
        let bytes = postcard::to_allocvec(&value).expect("serializes");
        self.compare(&value, hex(&bytes), expected);
    }

    /// Fails unless the examples cover every variant of `T`.
    fn covers<T: DeserializeOwned>(&self) {
        let name = std::any::type_name::<T>();
        let seen = self.seen.get(name).cloned().unwrap_or_default();
        let all: BTreeSet<u8> = (0..variant_count::<T>()).collect();
        let missing: Vec<u8> = all.difference(&seen).copied().collect();
        assert!(missing.is_empty(), "{name}: no golden bytes for variants {missing:?}");
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

const S: SessionId = SessionId(5);

fn lines(line: &str) -> Vec<String> {
    vec![line.to_string()]
}

#[test]
fn bus_messages_keep_their_bytes() {
    assert_eq!(VERSION, 4, "the version changed: update the golden bytes below");
    let mut g = Golden::default();

    let hello =
        WorkerReport::Hello { slot: 1, pid: 2, generation: 3, handoff: 4, version: "0.1".into() };
    g.hub_frame(ToHub::Control(hello), "0400000102030403302e31");
    let counters = WorkerCounters {
        connections: 1,
        bytes_received: 2,
        bytes_sent: 300,
        deliveries: 4,
        rate_limited: 5,
        tls_rejected: 6,
    };
    g.hub_frame(ToHub::Control(WorkerReport::Heartbeat { counters }), "0400010102ac02040506");
    g.hub_frame(ToHub::Control(WorkerReport::HandoffDone { sessions: 6 }), "04000206");
    g.hub_frame(ToHub::Control(WorkerReport::Draining), "040003");
    let load = SessionLoad { session: S, idle_ms: 2, queued: 3, transport: Kind::Tls };
    let sessions = WorkerReport::Sessions { id: 1, sessions: vec![load], last: true };
    g.hub_frame(ToHub::Control(sessions), "04000401010502030101");
    // Added without a version bump: only a supervisor that passes `--keep-sessions` (which
    // reads it) ever gets it, so no older peer does.
    g.hub_frame(ToHub::Control(WorkerReport::Kept { file: KeptFile::Table }), "04000500");
    g.hub_frame(ToHub::Control(WorkerReport::Kept { file: KeptFile::Bag }), "04000501");

    let addr = "127.0.0.1:9".parse().expect("address");
    g.hub_frame(ToHub::Room(RoomRequest::Join { conn: ConnId(4), addr }), "04010004007f00000109");
    g.hub_frame(ToHub::Room(RoomRequest::Say { session: S, text: "hi".into() }), "04010105026869");
    g.hub_frame(ToHub::Room(RoomRequest::Me { session: S, text: "w".into() }), "040102050177");
    g.hub_frame(ToHub::Room(RoomRequest::Nick { session: S, nick: "n".into() }), "04010305016e");
    let msg = RoomRequest::Msg { session: S, to: "t".into(), text: "x".into() };
    g.hub_frame(ToHub::Room(msg), "0401040501740178");
    let query = RoomRequest::Query { session: S, query: Query::History(Some(3)) };
    g.hub_frame(ToHub::Room(query), "04010505010103");
    let leave = RoomRequest::Leave { session: S, reason: LeaveReason::Quit(Some("b".into())) };
    g.hub_frame(ToHub::Room(leave), "0401060500010162");
    g.hub_frame(ToHub::Room(RoomRequest::Adopt { session: S, last_seq: 9 }), "0401070509");

    let setup =
        WorkerOrder::Setup { slot: 1, generation: 2, config: "c".into(), config_path: "p".into() };
    g.worker_frame(ToWorker::Control(setup), "040000010201630170");
    g.worker_frame(ToWorker::Control(WorkerOrder::Shutdown), "040001");
    g.worker_frame(ToWorker::Control(WorkerOrder::HandOff), "040002");
    g.worker_frame(ToWorker::Control(WorkerOrder::Receive), "040003");
    g.worker_frame(ToWorker::Control(WorkerOrder::Drain { timeout_ms: 300 }), "040004ac02");
    g.worker_frame(ToWorker::Control(WorkerOrder::Exit), "040005");
    g.worker_frame(ToWorker::Control(WorkerOrder::Inspect { id: 7 }), "04000607");

    g.worker_frame(ToWorker::Room(RoomUpdate::Sync { seq: 7 }), "04010007");
    let snapshot =
        RoomUpdate::Snapshot { members: vec![(SessionId(1), "a".into())], history: lines("h") };
    g.worker_frame(ToWorker::Room(snapshot), "04010101010161010168");
    let admitted =
        RoomUpdate::Admitted { conn: ConnId(1), session: SessionId(2), welcome: "w".into() };
    g.worker_frame(ToWorker::Room(admitted), "04010201020177");
    g.worker_frame(
        ToWorker::Room(RoomUpdate::Refused { conn: ConnId(3), line: "r".into() }),
        "040103030172",
    );
    let line = RoomUpdate::Line {
        seq: 10,
        skip: Some(SessionId(11)),
        line: "l".into(),
        event: RoomEvent::Nick { session: SessionId(11), nick: "n".into() },
    };
    g.worker_frame(ToWorker::Room(line), "0401040a010b016c040b016e");
    g.worker_frame(
        ToWorker::Room(RoomUpdate::Direct { session: S, lines: lines("d") }),
        "04010505010164",
    );
    g.worker_frame(ToWorker::Room(RoomUpdate::Left { session: S }), "04010605");
    g.worker_frame(
        ToWorker::Room(RoomUpdate::Resume { session: S, lines: Vec::new() }),
        "0401070500",
    );
    g.worker_frame(
        ToWorker::Room(RoomUpdate::Replay { session: S, lines: lines("r") }),
        "04010805010172",
    );
    g.worker_frame(
        ToWorker::Room(RoomUpdate::Answer { session: S, query: Query::Who }),
        "0401090500",
    );
    g.worker_frame(ToWorker::Room(RoomUpdate::Log { line: "l".into() }), "04010a016c");

    g.part(LeaveReason::Quit(None), "0000");
    g.part(LeaveReason::Closed, "01");
    g.part(LeaveReason::Lost, "02");
    g.part(LeaveReason::TooSlow, "03");
    g.part(LeaveReason::Idle, "04");
    g.part(LeaveReason::Restart, "05");
    g.part(LeaveReason::Kicked(Some("r".into())), "06010172");
    g.part(LeaveReason::Banned(None), "0700");
    g.part(RoomEvent::Chat, "00");
    g.part(RoomEvent::Me, "01");
    g.part(RoomEvent::Join { session: S, nick: "j".into() }, "0205016a");
    g.part(RoomEvent::Leave { session: S }, "0305");
    g.part(RoomEvent::Nick { session: S, nick: "n".into() }, "0405016e");
    g.part(RoomEvent::Notice, "05");
    g.part(Query::Who, "00");
    g.part(Query::History(None), "0100");

    g.covers::<ToHub>();
    g.covers::<WorkerReport>();
    g.covers::<RoomRequest>();
    g.covers::<ToWorker>();
    g.covers::<WorkerOrder>();
    g.covers::<RoomUpdate>();
    g.covers::<LeaveReason>();
    g.covers::<RoomEvent>();
    g.covers::<Query>();
    g.verify(u32::from(VERSION));
}

#[test]
fn variant_count_counts_every_variant() {
    assert_eq!(variant_count::<Query>(), 2);
    assert_eq!(variant_count::<LeaveReason>(), 8);
    assert_eq!(variant_count::<ToWorker>(), 2);
    assert_eq!(variant_count::<RoomUpdate>(), 11);
}

#[test]
fn handoff_records_keep_their_bytes() {
    assert_eq!(handoff::VERSION, 6, "the version changed: update the golden bytes below");
    let mut g = Golden::default();
    let state = |transport| SessionState {
        session: SessionId(1),
        input: PendingInput {
            ready: vec![Decoded::Line("r".into()), Decoded::TooLong],
            partial: b"p".to_vec(),
            discarding: false,
            telnet: vec![255],
        },
        output: b"o".to_vec(),
        mid_line: true,
        last_seq: 2,
        tokens: Some(1.5),
        idle_ms: 3,
        leaving: false,
        eof: false,
        transport,
    };
    g.frame(
        &Transfer::Session(state(None)),
        "040001020001720101700001ff016f010201000000000000f83f03000000",
    );
    let tls = TransportState::Tls { session: tls_state(&tls_hex()), unsent: b"u".to_vec() };
    let expected = "040001020001720101700001ff016f010201000000000000f83f03000001";
    g.frame(
        &Transfer::Session(state(Some(Box::new(tls)))),
        &format!("{expected}00{}0175", tls_hex()),
    );
    let tls = TransportState::Tls { session: tls_state(&tls_hex()), unsent: Vec::new() };
    g.part(tls, &format!("00{}00", tls_hex()));
    let web = TransportState::Web { socket: web_state(WEB_HEX), unsent: b"u".to_vec() };
    g.part(web, &format!("01{WEB_HEX}0175"));
    let both = TransportState::TlsWeb {
        session: tls_state(&tls_hex()),
        socket: web_state(WEB_HEX),
        unsent: Vec::new(),
    };
    g.part(both, &format!("02{}{WEB_HEX}00", tls_hex()));
    g.frame(&Transfer::Direct { session: SessionId(4), lines: lines("d") }, "040104010164");
    g.frame(&Transfer::Left { session: SessionId(4) }, "040204");
    g.frame(&Transfer::Output { session: SessionId(4), bytes: b"ab".to_vec() }, "040304026162");
    g.part(Decoded::Line("r".into()), "000172");
    g.part(Decoded::TooLong, "01");
    g.covers::<Transfer>();
    g.covers::<Decoded>();
    g.covers::<TransportState>();
    g.verify(handoff::VERSION);
}

/// A TLS traffic secret of 48 bytes (SHA-384), as postcard writes it.
fn secret(byte: u8) -> String {
    format!("30{}", hex(&[byte; 48]))
}

/// A TLS session state as postcard writes it: TLS_AES_256_GCM_SHA384 (0x1302), both secrets
/// and sequence numbers, no partial record or KeyUpdate, counters at 0, no close_notify.
fn tls_hex() -> String {
    format!("8226{}07{}09000000000000", secret(1), secret(2))
}

/// The TLS session state `hex` encodes; its fields are the TLS module's own, so a state is
/// made from bytes rather than built here.
/// A WebSocket state as postcard writes it: one header byte (0x81) arrived, no frame under
/// way, a text message with half a `é` (0xc3), no close, told about a binary message.
const WEB_HEX: &str = "0181000101c3000001";

fn web_state(hex: &str) -> crate::web::WebState {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    postcard::from_bytes(&bytes).expect("a WebSocket state")
}

fn tls_state(hex: &str) -> crate::tls::SessionState {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    postcard::from_bytes(&bytes).expect("a TLS session state")
}

#[test]
fn byte_fields_keep_the_bytes_of_a_sequence_of_u8() {
    // Byte fields are serialized as byte strings (`serde_bytes`) so that they are copied at
    // once; postcard writes those exactly as it writes a `Vec<u8>`: a varint length, then the
    // bytes. A record from a worker that encoded them one by one reads the same.
    #[derive(Serialize)]
    struct AsSequence(Vec<u8>);
    #[derive(Serialize)]
    struct AsBytes(#[serde(with = "serde_bytes")] Vec<u8>);
    let bytes: Vec<u8> = (0..=255).cycle().take(300).collect();
    let sequence = postcard::to_allocvec(&AsSequence(bytes.clone())).expect("serializes");
    assert_eq!(postcard::to_allocvec(&AsBytes(bytes)).expect("serializes"), sequence);
}
