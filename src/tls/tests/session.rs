//! The record layer after the handshake, against a rustls client: records both ways in any
//! slicing, KeyUpdate, close_notify, and what garbage gets.

use rustls::AlertDescription;

use super::*;
use crate::tls::{MAX_PLAINTEXT, RecordError};

#[test]
fn records_cut_anywhere_are_put_back_together() {
    let mut pair = connect();
    let records = [pair.client_seals(b"one\n"), pair.client_seals(b"two\n")].concat();
    let mut plain = Vec::new();
    for byte in &records {
        let (part, status) = pair.server_opens(std::slice::from_ref(byte));
        assert_eq!(status, Status::Open);
        plain.extend(part);
    }
    assert_eq!(plain, b"one\ntwo\n");
    assert!(pair.server.partial_record.is_empty());
}

#[test]
fn long_writes_are_split_into_full_records_both_ways() {
    let mut pair = connect();
    let text: Vec<u8> = (0..3 * MAX_PLAINTEXT + 100).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::new();
    pair.server.seal(&text, &mut out).expect("seal");
    // Four records: three full ones and the rest, each with a 5-byte header and 17 bytes of
    // inner type and tag.
    assert_eq!(out.len(), text.len() + 4 * (5 + 17));
    assert_eq!(client_input(&mut pair.client, &out).expect("client reads"), text);
    assert_eq!(pair.client_to_server(&text), text);
}

#[test]
fn a_client_key_update_is_answered_and_both_directions_move_on() {
    let mut pair = connect();
    pair.chat("before");
    pair.client.refresh_traffic_keys().expect("key update");
    let records = pair.client_seals(b"under the new key\n");
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    pair.server.open(&records, &mut plain, &mut out).expect("open");
    assert_eq!(plain, b"under the new key\n");
    assert!(!out.is_empty(), "chatd answers update_requested with its own KeyUpdate");
    assert_eq!(pair.server.rx.seq, 1, "the client's records count from 0 under the new key");
    assert_eq!(pair.server.tx.seq, 0, "so do chatd's");
    // The client takes the answer, then reads what chatd seals under its new key.
    assert!(client_input(&mut pair.client, &out).expect("client takes it").is_empty());
    pair.chat("after");
}

#[test]
fn a_key_update_without_request_is_followed_without_an_answer() {
    let mut pair = connect();
    let mut peer = mirror(&pair.server);
    let mut records = Vec::new();
    peer.send_key_update(&mut records).expect("key update");
    peer.seal(b"after update_not_requested\n", &mut records).expect("seal");
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    pair.server.open(&records, &mut plain, &mut out).expect("open");
    assert_eq!(plain, b"after update_not_requested\n");
    assert!(out.is_empty(), "nothing to answer");
}

#[test]
fn key_updates_in_a_loop_are_cut_off_but_chat_resets_the_count() {
    let mut pair = connect();
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().expect("key update");
        let records = client_output(&mut pair.client);
        pair.server_opens(&records);
    }
    pair.chat("32 key updates are fine");
    for _ in 0..32 {
        pair.client.refresh_traffic_keys().expect("key update");
        let records = client_output(&mut pair.client);
        pair.server_opens(&records);
    }
    pair.client.refresh_traffic_keys().expect("key update");
    let records = client_output(&mut pair.client);
    let error = pair.server.open(&records, &mut Vec::new(), &mut Vec::new()).expect_err("33rd");
    assert_eq!(error.alert(), Some(AlertDescription::UnexpectedMessage), "{error}");
}

#[test]
fn chatd_moves_to_a_new_key_at_the_suites_limit() {
    let mut pair = connect();
    pair.server.rekey_after(3);
    for i in 0..7 {
        let line = format!("line {i}\n");
        assert_eq!(pair.server_to_client(line.as_bytes()), line.as_bytes());
    }
    // Lines 0-2 under the first key, a KeyUpdate, 3-5 under the next, a KeyUpdate, 6.
    assert_eq!(pair.server.tx.seq, 1);
    pair.chat("after rekeying");
}

#[test]
fn close_notify_from_the_client_ends_its_input_only() {
    let mut pair = connect();
    pair.client.writer().write_all(b"last words\n").expect("write");
    pair.client.send_close_notify();
    let records = client_output(&mut pair.client);
    let trailing = [records.as_slice(), b"ignored after close_notify"].concat();
    let (plain, status) = pair.server_opens(&trailing);
    assert_eq!(plain, b"last words\n");
    assert_eq!(status, Status::PeerClosed);
    assert!(pair.server.peer_closed());
    assert!(pair.server.partial_record.is_empty());
    // chatd may still send, then close its side.
    assert_eq!(pair.server_to_client(b"goodbye\n"), b"goodbye\n");
    let mut out = Vec::new();
    pair.server.close(&mut out).expect("close");
    client_input(&mut pair.client, &out).expect("client takes close_notify");
    assert!(pair.client.process_new_packets().expect("state").peer_has_closed());
}

#[test]
fn close_notify_from_chatd_is_a_clean_end_for_the_client() {
    let mut pair = connect();
    let mut out = Vec::new();
    pair.server.seal(b"bye\n", &mut out).expect("seal");
    pair.server.close(&mut out).expect("close");
    pair.server.close(&mut out).expect("a second close sends nothing");
    assert_eq!(client_input(&mut pair.client, &out).expect("client reads"), b"bye\n");
    assert!(pair.client.process_new_packets().expect("state").peer_has_closed());
    assert!(matches!(pair.server.seal(b"more", &mut out), Err(RecordError::Closed)));
    // The client may still talk until it closes too.
    assert_eq!(pair.client_to_server(b"still here\n"), b"still here\n");
}

#[test]
fn a_record_of_garbage_fails_authentication_and_the_client_is_told() {
    let mut pair = connect();
    let mut garbage = vec![23, 3, 3, 0x40, 0];
    garbage.extend((0..0x4000u32).map(|i| (i * 7 + 3) as u8));
    let mut plain = Vec::new();
    let error = pair.server.open(&garbage, &mut plain, &mut Vec::new()).expect_err("garbage");
    assert!(matches!(error, RecordError::BadRecord), "{error}");
    assert!(plain.is_empty(), "nothing of it reaches the caller");
    let mut out = Vec::new();
    pair.server.abort(&error, &mut out).expect("alert");
    let told = client_input(&mut pair.client, &out).expect_err("client gets the alert");
    assert_eq!(told, rustls::Error::AlertReceived(AlertDescription::BadRecordMac));
}

#[test]
fn plaintext_after_the_handshake_is_refused() {
    let mut pair = connect();
    let error =
        pair.server.open(b"hello there\n", &mut Vec::new(), &mut Vec::new()).expect_err("plain");
    assert_eq!(error.alert(), Some(AlertDescription::UnexpectedMessage), "{error}");
}

#[test]
fn an_oversized_record_is_refused_from_its_header() {
    let mut pair = connect();
    let header = [23, 3, 3, 0x41, 0x01];
    let error = pair.server.open(&header, &mut Vec::new(), &mut Vec::new()).expect_err("too long");
    assert!(matches!(error, RecordError::RecordOverflow), "{error}");
}

#[test]
fn a_fatal_alert_from_the_client_ends_the_session() {
    let mut pair = connect();
    let mut peer = mirror(&pair.server);
    let mut records = Vec::new();
    peer.abort(&RecordError::BadRecord, &mut records).expect("alert");
    let error = pair.server.open(&records, &mut Vec::new(), &mut Vec::new()).expect_err("alert");
    assert!(matches!(error, RecordError::AlertReceived(AlertDescription::BadRecordMac)));
    assert_eq!(error.alert(), None, "an alert is not answered");
}

#[test]
fn a_handshake_message_other_than_key_update_is_refused() {
    let mut pair = connect();
    let mut peer = mirror(&pair.server);
    let mut records = Vec::new();
    // A ClientHello (type 1) after the handshake: renegotiation does not exist in TLS 1.3.
    peer.tx.seal(rustls::ContentType::Handshake, &[1, 0, 0, 0], &mut records).expect("seal");
    let error = pair.server.open(&records, &mut Vec::new(), &mut Vec::new()).expect_err("refused");
    assert_eq!(error.alert(), Some(AlertDescription::UnexpectedMessage), "{error}");
}
