use super::socket::conversation;
use super::*;
use crate::web::{WebRestoreError, WebState};

/// Through the bytes a hand-off carries.
fn travel(state: WebState) -> WebState {
    postcard::from_bytes(&postcard::to_stdvec(&state).unwrap()).unwrap()
}

#[test]
fn a_session_handed_off_anywhere_goes_on_as_if_uninterrupted() {
    let input = conversation();
    let whole = decode_all(&input);
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        let mut first = WebSocket::new();
        let before = decode_pieces(&mut first, [a]);
        let mut second = WebSocket::restore(travel(first.into_state())).unwrap();
        let after = decode_pieces(&mut second, [b]);
        let joined = Outcome {
            lines: [before.lines, after.lines].concat(),
            reply: [before.reply, after.reply].concat(),
            end: if before.end == Ok(Decoded::Open) { after.end } else { before.end },
        };
        assert_eq!(joined, whole, "handed off after {at} bytes");
    }
}

#[test]
fn the_close_state_travels() {
    let mut socket = WebSocket::new();
    socket.close(super::super::CloseCode::Away, &mut Vec::new());
    let mut restored = WebSocket::restore(travel(socket.into_state())).unwrap();
    let mut out = Vec::new();
    restored.encode(b"nothing after close\r\n", &mut out);
    restored.close(super::super::CloseCode::Normal, &mut out);
    assert_eq!(out, b"");
}

/// A state as JSON, changed, back: how a state no session can be in is made.
fn altered(
    input: &[u8],
    change: impl FnOnce(&mut serde_json::Value),
) -> Result<WebSocket, WebRestoreError> {
    let mut socket = WebSocket::new();
    decode_pieces(&mut socket, [input]);
    let mut json = serde_json::to_value(socket.into_state()).unwrap();
    change(&mut json);
    WebSocket::restore(serde_json::from_value(json).unwrap())
}

#[test]
fn states_no_session_can_be_in_are_refused() {
    let ping = client_frame(PING, true, b"12345");
    let started_ping = &ping[..8];
    let started_text = &text("hello")[..8];
    assert!(altered(started_ping, |_| {}).is_ok());
    assert!(altered(started_text, |_| {}).is_ok());
    // A whole header kept as partial.
    assert!(
        altered(&[], |s| s["partial_header"] = serde_json::json!([0x81, 0x80, 1, 2, 3, 4]))
            .is_err()
    );
    // Too many header bytes.
    assert!(altered(&[], |s| s["partial_header"] = serde_json::json!(vec![0; 14])).is_err());
    // A partial header inside a frame.
    assert!(altered(started_ping, |s| s["partial_header"] = serde_json::json!([0x81])).is_err());
    // A ping longer than a control frame may be.
    assert!(altered(started_ping, |s| s["frame"]["remaining"] = serde_json::json!(200)).is_err());
    // A ping payload that does not match what was received.
    assert!(altered(started_ping, |s| s["frame"]["received"] = serde_json::json!(3)).is_err());
    // A data frame outside a message.
    assert!(altered(started_text, |s| s["message"] = serde_json::json!("None")).is_err());
    // A length over 2^63.
    assert!(
        altered(started_text, |s| s["frame"]["remaining"] = serde_json::json!(u64::MAX)).is_err()
    );
    // A "character" that is not the start of one.
    assert!(altered(started_text, |s| s["message"] = serde_json::json!({"Text": [0x41]})).is_err());
    assert!(
        altered(started_text, |s| s["message"] = serde_json::json!({"Text": [0xe2, 0x82]})).is_ok()
    );
}
