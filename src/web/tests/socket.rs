use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, OpCode};

use super::*;
use crate::web::BINARY_NOTICE;

#[test]
fn text_messages_from_tungstenites_client_become_lines() {
    let mut peer = peer();
    let long = "x".repeat(70_000);
    for message in ["hello", "", "/nick ünïcode-✓", "😀 four bytes", long.as_str()] {
        peer.send(Message::text(message)).unwrap();
    }
    let outcome = decode_all(&sent(&mut peer));
    let expected = format!("hello\n\n/nick ünïcode-✓\n😀 four bytes\n{long}\n");
    assert_eq!(String::from_utf8(outcome.lines).unwrap(), expected);
    assert_eq!(outcome.reply, b"");
    assert_eq!(outcome.end, Ok(Decoded::Open));
}

#[test]
fn lines_become_text_frames_tungstenites_client_reads() {
    let mut socket = WebSocket::new();
    let long = "y".repeat(70_000);
    let mut out = Vec::new();
    socket.encode(
        format!("* Welcome\r\n12:00 <a> hi\r\n\r\n{long}\r\nbare lf\n").as_bytes(),
        &mut out,
    );
    let mut peer = peer();
    deliver(&mut peer, &out);
    let mut got = Vec::new();
    while let Ok(message) = peer.read() {
        got.push(message);
    }
    let expected = ["* Welcome", "12:00 <a> hi", "", long.as_str(), "bare lf"];
    assert_eq!(got, expected.map(Message::text));
    // Unmasked, so the same bytes for everyone.
    assert_eq!(out[0..2], [0x81, 9]);
}

#[test]
fn a_fragmented_message_with_control_frames_between_is_one_line() {
    let input = [
        client_frame(TEXT, false, b"hel"),
        client_frame(PING, true, b"are you there"),
        client_frame(CONTINUE, false, b"lo "),
        client_frame(
            OpCode::Control(tungstenite::protocol::frame::coding::Control::Pong),
            true,
            b"",
        ),
        client_frame(CONTINUE, true, b"world"),
        text("next"),
    ]
    .concat();
    let outcome = decode_all(&input);
    assert_eq!(outcome.lines, b"hello world\nnext\n");
    let mut peer = peer();
    deliver(&mut peer, &outcome.reply);
    assert_eq!(peer.read().unwrap(), Message::Pong("are you there".into()));
}

#[test]
fn ping_is_answered_with_its_payload() {
    let mut peer = peer();
    peer.send(Message::Ping("1234".into())).unwrap();
    let outcome = decode_all(&sent(&mut peer));
    assert_eq!(outcome.end, Ok(Decoded::Open));
    deliver(&mut peer, &outcome.reply);
    assert_eq!(peer.read().unwrap(), Message::Pong("1234".into()));
}

#[test]
fn the_clients_close_is_answered_and_ends_the_session() {
    let mut peer = peer();
    peer.send(Message::text("last words")).unwrap();
    let close = CloseFrame { code: CloseCode::Away, reason: "tab closed".into() };
    peer.close(Some(close)).unwrap();
    let mut socket = WebSocket::new();
    let mut bytes = sent(&mut peer);
    bytes.extend_from_slice(&text("after close"));
    let outcome = decode_pieces(&mut socket, [bytes.as_slice()]);
    assert_eq!(outcome.lines, b"last words\n");
    assert_eq!(outcome.end, Ok(Decoded::Closed { code: Some(1001) }));
    deliver(&mut peer, &outcome.reply);
    // tungstenite sees its close answered, 1001 echoed.
    let Message::Close(Some(answer)) = peer.read().unwrap() else {
        panic!("no close answer");
    };
    assert_eq!(answer.code, CloseCode::Away);
    // Nothing more comes out of a closed session.
    let mut lines = Vec::new();
    let mut reply = Vec::new();
    let again = socket.decode(&text("more"), &mut lines, &mut reply);
    assert_eq!((again, lines, reply), (Ok(Decoded::Closed { code: None }), vec![], vec![]));
}

#[test]
fn the_servers_close_is_answered_by_the_client() {
    let mut socket = WebSocket::new();
    let mut out = Vec::new();
    socket.encode(b"* server shutting down\r\n", &mut out);
    socket.close(CloseCode::Away, &mut out);
    socket.close(CloseCode::Normal, &mut out);
    socket.encode(b"too late\r\n", &mut out);
    let mut peer = peer();
    deliver(&mut peer, &out);
    assert_eq!(peer.read().unwrap(), Message::text("* server shutting down"));
    let Message::Close(Some(frame)) = peer.read().unwrap() else {
        panic!("no close frame");
    };
    assert_eq!(frame.code, CloseCode::Away);
    let _ = peer.flush();
    let outcome = decode_pieces(&mut socket, [sent(&mut peer).as_slice()]);
    assert_eq!(outcome.end, Ok(Decoded::Closed { code: Some(1001) }));
    assert_eq!(outcome.reply, b"", "the server's close is not sent twice");
}

/// The close frame the server sends on an error.
fn close_frame(code: u16) -> Vec<u8> {
    let mut frame = vec![0x88, 2];
    frame.extend_from_slice(&code.to_be_bytes());
    frame
}

#[test]
fn protocol_errors_close_with_1002_or_1007() {
    let unmasked = {
        let mut out = Vec::new();
        Frame::message(b"hi".to_vec(), TEXT, true).format(&mut out).unwrap();
        out
    };
    let mut rsv = text("hi");
    rsv[0] |= 0x40;
    let mut reserved_opcode = text("hi");
    reserved_opcode[0] = 0x83;
    let mut huge = vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let close = |payload: &[u8]| client_frame(CLOSE, true, payload);
    let cases: Vec<(Vec<u8>, WsError)> = vec![
        (unmasked, WsError::Unmasked),
        (rsv, WsError::ReservedBits),
        (reserved_opcode, WsError::ReservedOpcode),
        (huge, WsError::BadLength),
        (client_frame(PING, true, &[0; 126]), WsError::BadControlFrame),
        (client_frame(PING, false, b"x"), WsError::BadControlFrame),
        (client_frame(CONTINUE, true, b"x"), WsError::UnexpectedContinuation),
        ([client_frame(TEXT, false, b"a"), text("b")].concat(), WsError::UnfinishedMessage),
        ([client_frame(BINARY, false, b"a"), text("b")].concat(), WsError::UnfinishedMessage),
        (close(&[3]), WsError::BadClose),
        (close(&1005u16.to_be_bytes()), WsError::BadClose),
        (close(&999u16.to_be_bytes()), WsError::BadClose),
        (close(&[0x03, 0xe8, 0xff]), WsError::BadCloseReason),
    ];
    for (input, error) in cases {
        let outcome = decode_all(&input);
        assert_eq!(outcome.end, Err(error), "{input:02x?}");
        assert_eq!(outcome.reply, close_frame(u16::from(error.code())), "{error}");
        let expected = if error == WsError::BadCloseReason { 1007 } else { 1002 };
        assert_eq!(u16::from(error.code()), expected);
    }
}

#[test]
fn a_binary_message_is_dropped_with_a_notice_and_the_session_goes_on() {
    let input = [
        client_frame(BINARY, false, &[0xff, 0, 1]),
        client_frame(PING, true, b"p"),
        client_frame(CONTINUE, true, &[2, 3]),
        client_frame(BINARY, true, b"told once"),
        text("still here"),
        client_frame(BINARY, true, b"again"),
    ]
    .concat();
    let outcome = decode_all(&input);
    assert_eq!(outcome.lines, b"still here\n");
    assert_eq!(outcome.end, Ok(Decoded::Open));
    let mut peer = peer();
    deliver(&mut peer, &outcome.reply);
    assert_eq!(peer.read().unwrap(), Message::Pong("p".into()));
    assert_eq!(peer.read().unwrap(), Message::text(BINARY_NOTICE));
    assert_eq!(peer.read().unwrap(), Message::text(BINARY_NOTICE));
}

#[test]
fn invalid_utf8_is_replaced_and_characters_cut_by_frames_are_not() {
    let euro = "€".as_bytes();
    let input = [
        client_frame(TEXT, false, &[b'a', euro[0]]),
        client_frame(CONTINUE, false, &euro[1..]),
        client_frame(CONTINUE, true, &[b'b', 0xff, 0xfa, b'c', 0xe2, 0x82]),
        client_frame(TEXT, true, &[0xc3, 0x28]),
    ]
    .concat();
    let outcome = decode_all(&input);
    assert_eq!(
        String::from_utf8(outcome.lines).unwrap(),
        "a€b\u{FFFD}\u{FFFD}c\u{FFFD}\n\u{FFFD}(\n"
    );
    assert_eq!(outcome.end, Ok(Decoded::Open));
}

#[test]
fn a_huge_message_streams_through_without_being_held() {
    let payload = vec![b'z'; 1 << 20];
    let frame = client_frame(TEXT, true, &payload);
    let mut socket = WebSocket::new();
    let (mut lines, mut reply) = (Vec::new(), Vec::new());
    let mut held = 0;
    for piece in frame.chunks(4096) {
        lines.clear();
        socket.decode(piece, &mut lines, &mut reply).unwrap();
        held = held.max(lines.len());
    }
    assert!(held <= 4096, "{held}");
    assert_eq!(lines.last(), Some(&b'\n'));
    assert!(std::mem::size_of::<WebSocket>() <= 96, "{}", std::mem::size_of::<WebSocket>());
}

/// A conversation with every kind of frame, decoded in two pieces split at every byte, and
/// byte by byte, gives what it gives in one piece.
#[test]
fn input_split_anywhere_decodes_the_same() {
    let input = conversation();
    let whole = decode_all(&input);
    assert_eq!(whole.end, Ok(Decoded::Closed { code: Some(1000) }));
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        assert_eq!(decode_pieces(&mut WebSocket::new(), [a, b]), whole, "split at {at}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(decode_pieces(&mut WebSocket::new(), bytes), whole);
}

/// Frames of every kind, ending with a close.
pub(super) fn conversation() -> Vec<u8> {
    let long = "l".repeat(300);
    [
        text("hi"),
        client_frame(TEXT, false, "é€".as_bytes()),
        client_frame(PING, true, b"ping"),
        client_frame(CONTINUE, true, "😀!".as_bytes()),
        client_frame(BINARY, true, b"\x00\x01"),
        text(&long),
        client_frame(TEXT, true, &[b'x', 0xf0, 0x9f]),
        client_frame(CLOSE, true, &[0x03, 0xe8, b'o', b'k']),
    ]
    .concat()
}

/// Through the plain connection's `LineDecoder`, a web client's over-long message is too long
/// exactly as the same line would be from a plain client, and costs no more while it arrives.
#[test]
fn a_message_over_max_line_bytes_is_too_long_as_on_a_plain_connection() {
    use crate::protocol::decoder::LineDecoder;
    let long = "w".repeat(100_000);
    let input =
        [text(&long), client_frame(TEXT, false, b"o"), client_frame(CONTINUE, true, b"k")].concat();
    let mut socket = WebSocket::new();
    let mut web = LineDecoder::new(1024);
    let (mut lines, mut reply) = (Vec::new(), Vec::new());
    for piece in input.chunks(1000) {
        lines.clear();
        socket.decode(piece, &mut lines, &mut reply).unwrap();
        web.feed(&lines);
        assert!(web.buffered_bytes() <= 1025);
    }
    let mut plain = LineDecoder::new(1024);
    plain.feed(format!("{long}\nok\n").as_bytes());
    assert_eq!(web.collect::<Vec<_>>(), plain.collect::<Vec<_>>());
}

proptest::proptest! {
    /// Any text messages, fragmented anywhere (mid-character included) with pings between the
    /// fragments, read in pieces of any size: each message is one line, each ping one pong.
    #[test]
    fn fragmented_messages_read_in_any_pieces_are_their_lines(
        messages in proptest::collection::vec(("\\PC{0,40}", proptest::collection::vec(0usize..200, 0..4)), 0..8),
        piece in 1usize..64,
    ) {
        let mut input = Vec::new();
        let mut expected = String::new();
        let mut pongs = Vec::new();
        for (message, cuts) in &messages {
            let bytes = message.as_bytes();
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut from = 0;
            for (i, &cut) in cuts.iter().chain([&bytes.len()]).enumerate() {
                let opcode = if i == 0 { TEXT } else { CONTINUE };
                input.extend(client_frame(opcode, i == cuts.len(), &bytes[from..cut]));
                if i < cuts.len() {
                    input.extend(client_frame(PING, true, &[i as u8]));
                    let mut pong = Vec::new();
                    Frame::pong(vec![i as u8]).format(&mut pong).unwrap();
                    pongs.extend(pong);
                }
                from = cut;
            }
            expected.push_str(message);
            expected.push('\n');
        }
        let outcome = decode_pieces(&mut WebSocket::new(), input.chunks(piece));
        proptest::prop_assert_eq!(String::from_utf8(outcome.lines).unwrap(), expected);
        proptest::prop_assert_eq!(outcome.reply, pongs);
        proptest::prop_assert_eq!(outcome.end, Ok(Decoded::Open));
    }
}
