//! The hand-off: a session serialised, restored from the bytes alone, and carried on with the
//! same client, whatever was in flight.

use serde::Serialize;

use super::*;
use crate::tls::RestoreError;

#[test]
fn a_restored_session_carries_on_both_ways() {
    let mut pair = connect();
    pair.chat("before");
    let mut pair = pair.hand_off();
    pair.chat("after one hand-off");
    let mut pair = pair.hand_off().hand_off();
    pair.chat("after three");
}

#[test]
fn a_record_cut_by_the_hand_off_is_completed_after_it() {
    let mut pair = connect();
    let records = pair.client_seals(b"split across two processes\n");
    let (first, status) = pair.server_opens(&records[..10]);
    assert!(first.is_empty());
    assert_eq!(status, Status::Open);
    let mut pair = pair.hand_off();
    let (rest, _) = pair.server_opens(&records[10..]);
    assert_eq!(rest, b"split across two processes\n");
    pair.chat("after");
}

#[test]
fn a_client_key_update_is_honoured_before_and_after_a_hand_off() {
    let mut pair = connect();
    pair.client.refresh_traffic_keys().expect("key update");
    pair.chat("after the first key update");
    let mut pair = pair.hand_off();
    pair.chat("after the hand-off");
    pair.client.refresh_traffic_keys().expect("key update");
    pair.chat("after the second key update");
    let mut pair = pair.hand_off();
    pair.client.refresh_traffic_keys().expect("key update");
    pair.chat("after a key update right after a hand-off");
}

#[test]
fn a_key_update_split_over_records_survives_a_hand_off() {
    let mut pair = connect();
    let mut peer = mirror(&pair.server);
    let mut first = Vec::new();
    peer.tx.seal(rustls::ContentType::Handshake, &[24, 0], &mut first).expect("seal");
    pair.server_opens(&first);
    let mut pair = pair.hand_off();
    let mut second = Vec::new();
    peer.tx.seal(rustls::ContentType::Handshake, &[0, 1, 0], &mut second).expect("seal");
    peer.tx.update();
    peer.seal(b"after the split key update\n", &mut second).expect("seal");
    let (plain, _) = pair.server_opens(&second);
    assert_eq!(plain, b"after the split key update\n");
}

#[test]
fn a_close_seen_before_the_hand_off_is_remembered() {
    let mut pair = connect();
    pair.client.send_close_notify();
    let records = client_output(&mut pair.client);
    assert_eq!(pair.server_opens(&records).1, Status::PeerClosed);
    let mut pair = pair.hand_off();
    assert!(pair.server.peer_closed());
    assert_eq!(pair.server_to_client(b"still sending\n"), b"still sending\n");
}

#[test]
fn the_state_never_shows_its_secrets() {
    let pair = connect();
    let session = format!("{:?}", pair.server);
    let shown = format!("{session} {:?}", pair.server.into_state());
    assert!(!shown.contains('['), "no byte lists: {shown}");
    assert!(shown.contains("TLS13_AES_256_GCM_SHA384"), "{shown}");
}

/// The wire layout of [`SessionState`], to build states no session would produce.
#[derive(Serialize)]
struct Raw {
    suite: u16,
    tx_secret: Vec<u8>,
    tx_seq: u64,
    rx_secret: Vec<u8>,
    rx_seq: u64,
    partial_record: Vec<u8>,
    partial_handshake: Vec<u8>,
    key_updates_in_a_row: u8,
    warning_alerts: u8,
    sent_close: bool,
    received_close: bool,
}

fn restore(raw: &Raw) -> Result<Session, RestoreError> {
    let bytes = postcard::to_allocvec(raw).expect("serialise");
    Session::restore(postcard::from_bytes(&bytes).expect("the layout of SessionState"))
}

#[test]
fn a_state_that_cannot_be_a_session_is_refused() {
    let good = || Raw {
        suite: 0x1303,
        tx_secret: vec![1; 32],
        tx_seq: 5,
        rx_secret: vec![2; 32],
        rx_seq: 7,
        partial_record: vec![23, 3, 3, 0, 40, 9],
        partial_handshake: vec![24],
        key_updates_in_a_row: 1,
        warning_alerts: 0,
        sent_close: false,
        received_close: false,
    };
    assert!(restore(&good()).is_ok());
    let aes_128 = Raw { suite: 0x1301, ..good() };
    assert_eq!(restore(&aes_128).err(), Some(RestoreError::UnknownSuite(0x1301)));
    let short = Raw { tx_secret: vec![1; 16], ..good() };
    assert_eq!(restore(&short).err(), Some(RestoreError::BadSecret));
    let sha384_length = Raw { rx_secret: vec![1; 48], ..good() };
    assert_eq!(restore(&sha384_length).err(), Some(RestoreError::BadSecret));
    let plaintext = Raw { partial_record: b"hello".to_vec(), ..good() };
    assert_eq!(restore(&plaintext).err(), Some(RestoreError::Invalid));
    let whole = Raw { partial_record: [&[23, 3, 3, 0, 17][..], &[0; 17]].concat(), ..good() };
    assert_eq!(restore(&whole).err(), Some(RestoreError::Invalid));
    let long_handshake = Raw { partial_handshake: vec![24, 0, 0, 1, 0], ..good() };
    assert_eq!(restore(&long_handshake).err(), Some(RestoreError::Invalid));
}
