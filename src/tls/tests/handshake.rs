//! The handshake driver: a real client gets through, fed in any slicing; what is not a TLS 1.3
//! client does not.

use std::io::Write;
use std::time::Instant;

use rustls::{AlertDescription, CipherSuite, ProtocolVersion};

use super::*;

#[test]
fn a_tls13_client_completes_the_handshake_and_chats() {
    let mut pair = connect();
    assert_eq!(pair.client.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(pair.server.suite(), CipherSuite::TLS13_AES_256_GCM_SHA384);
    pair.chat("first");
    pair.chat("second");
}

#[test]
fn the_handshake_advances_byte_by_byte() {
    let mut client = client();
    let mut handshake = Handshake::new(&acceptor()).expect("handshake");
    let started = handshake.started();
    assert!(started <= Instant::now());
    let hello = client_output(&mut client);
    let mut out = Vec::new();
    for byte in &hello[..hello.len() - 1] {
        let progress = handshake.advance(std::slice::from_ref(byte), &mut out);
        assert_eq!(progress.expect("advance"), Progress::NeedInput);
        assert!(out.is_empty(), "no answer to part of a ClientHello");
    }
    assert_eq!(
        handshake.advance(&hello[hello.len() - 1..], &mut out).expect("advance"),
        Progress::NeedInput
    );
    client_input(&mut client, &out).expect("client takes the server's flight");
    out.clear();
    let finished = client_output(&mut client);
    for (i, byte) in finished.iter().enumerate() {
        let progress = handshake.advance(std::slice::from_ref(byte), &mut out).expect("advance");
        let last = i == finished.len() - 1;
        assert_eq!(progress, if last { Progress::Done } else { Progress::NeedInput });
    }
    assert_eq!(handshake.started(), started, "the timeout counts from the start");
    let (server, rest) = handshake.finish().expect("finish");
    assert!(rest.is_empty());
    let mut pair = Pair { client, server };
    pair.chat("after a byte-by-byte handshake");
}

#[test]
fn data_the_client_sends_with_its_finished_reaches_the_session() {
    let mut client = client();
    let (mut server, rest) = handshake_with(&mut client, |client| {
        client.writer().write_all(b"right after the handshake\n").expect("client write");
    })
    .expect("handshake");
    assert!(!rest.is_empty(), "the client's first record came with its Finished");
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    assert_eq!(server.open(&rest, &mut plain, &mut out).expect("open"), Status::Open);
    assert_eq!(plain, b"right after the handshake\n");
}

#[test]
fn a_tls12_only_client_is_refused_with_protocol_version() {
    let mut client = client_with(&[&rustls::version::TLS12], true);
    let refused = handshake_with(&mut client, |_| {}).expect_err("TLS 1.2 refused");
    assert!(
        matches!(refused.server, HandshakeError::Tls(rustls::Error::PeerIncompatible(_))),
        "{refused:?}"
    );
    assert_eq!(
        refused.client,
        Some(rustls::Error::AlertReceived(AlertDescription::ProtocolVersion))
    );
}

#[test]
fn a_client_that_distrusts_the_certificate_fails_the_handshake_with_its_reason() {
    let mut client = client_with(&[&rustls::version::TLS13], false);
    let mut handshake = Handshake::new(&acceptor()).expect("handshake");
    let mut out = Vec::new();
    handshake.advance(&client_output(&mut client), &mut out).expect("ClientHello");
    let distrust = client_input(&mut client, &out).expect_err("unknown issuer");
    assert!(matches!(distrust, rustls::Error::InvalidCertificate(_)), "{distrust:?}");
    let error = handshake.advance(&client_output(&mut client), &mut Vec::new()).expect_err("alert");
    assert!(
        matches!(
            error,
            HandshakeError::Tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
        ),
        "{error:?}"
    );
}

#[test]
fn plaintext_instead_of_a_client_hello_is_refused_at_once() {
    let mut handshake = Handshake::new(&acceptor()).expect("handshake");
    let mut out = Vec::new();
    let error = handshake.advance(b"NICK alice\r\n", &mut out).expect_err("not TLS");
    assert!(matches!(error, HandshakeError::NotTls), "{error:?}");
    assert!(out.is_empty());
    assert_eq!(error.to_string(), "not a TLS handshake (plaintext?)");
}

#[test]
fn garbage_in_a_handshake_record_is_refused_with_an_alert() {
    let mut handshake = Handshake::new(&acceptor()).expect("handshake");
    let mut out = Vec::new();
    let garbage = [22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef];
    let error = handshake.advance(&garbage, &mut out).expect_err("garbage refused");
    assert!(matches!(error, HandshakeError::Tls(_)), "{error:?}");
    // An unencrypted alert record: type 21, then level fatal (2).
    assert_eq!(out.first(), Some(&21), "{out:?}");
    assert_eq!(out.get(5), Some(&2), "{out:?}");
}

#[test]
fn a_client_hello_in_tiny_fragments_cannot_make_chatd_hold_much() {
    let mut handshake = Handshake::new(&acceptor()).expect("handshake");
    let mut out = Vec::new();
    // The header of a 64 KiB ClientHello, then its body one byte per record: six bytes held for
    // each byte of the message until it is whole.
    let header = [22, 3, 1, 0, 4, 1, 0, 0xff, 0xf0];
    assert_eq!(handshake.advance(&header, &mut out).expect("header"), Progress::NeedInput);
    let fragments = [22, 3, 1, 0, 1, 0].repeat(1024);
    let mut fed = header.len();
    let error = loop {
        match handshake.advance(&fragments, &mut out) {
            Ok(progress) => assert_eq!(progress, Progress::NeedInput),
            Err(error) => break error,
        }
        fed += fragments.len();
        assert!(fed < 100 * 1024, "still holding {fed} bytes");
    };
    assert!(matches!(error, HandshakeError::TooLarge), "{error:?}");
}
