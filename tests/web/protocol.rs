//! The WebSocket at `/ws` against real clients (docs/web.md, "Reactions to what a client may
//! send"): tungstenite's client for what a library sends (text, binary, ping, close), and the
//! hand-written client of `tests/common/web.rs` for what no library sends (unmasked, reserved
//! opcode, RSV bits, a fragmented ping). Each
//! reaction is checked from both sides: what the web client gets, and what a plain TCP client in
//! the same room sees (or does not see).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::WebSocket;
use tungstenite::protocol::frame::coding::CloseCode;

use super::common::*;
use super::{start_web, web_addr};

/// A WebSocket client (tungstenite) with a deadline on every read.
pub struct LibWs {
    socket: WebSocket<TcpStream>,
}

impl LibWs {
    pub fn connect(addr: SocketAddr) -> LibWs {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect to /ws");
        stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let url = format!("ws://{addr}/ws");
        let (socket, response) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        // Short reads from now on, so each wait checks its own deadline.
        socket.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert_eq!(response.status().as_u16(), 101);
        LibWs { socket }
    }

    /// Connects and reads the welcome line; returns the client and its nick.
    pub fn join(addr: SocketAddr) -> (LibWs, String) {
        let mut ws = LibWs::connect(addr);
        let welcome = ws.next_text();
        let (nick, _) = parse_welcome(&welcome)
            .unwrap_or_else(|| panic!("expected a welcome message, got {welcome:?}"));
        (ws, nick)
    }

    /// The next message of any kind, within [`LINE_TIMEOUT`]; `None` once the connection ended.
    pub fn next_message(&mut self) -> Option<Message> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            match self.socket.read() {
                Ok(m) => return Some(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "no WebSocket message within {LINE_TIMEOUT:?}"
                    );
                }
                Err(_) => return None,
            }
        }
    }

    /// The next message must be text (one line); returns it.
    pub fn next_text(&mut self) -> String {
        match self.next_message() {
            Some(Message::Text(t)) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub fn send(&mut self, message: Message) {
        self.socket.send(message).expect("send a WebSocket message");
    }

    pub fn send_text(&mut self, line: &str) {
        self.send(Message::text(line));
    }
}

/// The observer reads up to its own `marker` line; returns what it read before it.
fn lines_until_marker(observer: &mut Client, nick: &str, marker: &str) -> Vec<String> {
    observer.send_line(marker);
    let mut seen = Vec::new();
    loop {
        let line = observer.next_line();
        if parse_chat(&line).is_some_and(|c| c.nick == nick && c.text == marker) {
            return seen;
        }
        seen.push(line);
    }
}

/// A server with a web listener too; returns it with the web address.
fn web_server(builder: ServerBuilder) -> (Server, SocketAddr) {
    let server = start_web(builder, None);
    let web = web_addr(&server);
    (server, web)
}

fn quiet_room() -> ServerBuilder {
    ServerBuilder::new().workers(2).chat_key("history_on_join = 0")
}

#[test]
fn an_over_long_message_is_refused_like_an_over_long_line() {
    let (server, web) = web_server(quiet_room().chat_key("max_line_bytes = 16"));
    let (mut observer, observer_nick) = {
        let (c, n, _) = server.join("observer");
        (c, n)
    };
    let (mut ws, nick) = LibWs::join(web);
    observer.read_until(LINE_TIMEOUT, |l| l.contains(" joined ")).unwrap();

    ws.send_text(&"x".repeat(17));
    assert_eq!(ws.next_text(), "! line too long (max 16 bytes)");
    // Sent in fragments, the same: the fragments make one message, hence one line.
    ws.send(Message::Frame(tungstenite::protocol::frame::Frame::message(
        "y".repeat(10),
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Text,
        ),
        false,
    )));
    ws.send(Message::Frame(tungstenite::protocol::frame::Frame::message(
        "y".repeat(10),
        tungstenite::protocol::frame::coding::OpCode::Data(
            tungstenite::protocol::frame::coding::Data::Continue,
        ),
        true,
    )));
    assert_eq!(ws.next_text(), "! line too long (max 16 bytes)");
    // The session goes on; a line of exactly 16 bytes passes.
    ws.send_text(&"z".repeat(16));
    let own = ws.next_text();
    assert!(parse_chat(&own).is_some_and(|c| c.nick == nick && c.text == "z".repeat(16)), "{own}");
    let seen = lines_until_marker(&mut observer, &observer_nick, "marker");
    let chat: Vec<_> = seen.iter().filter_map(|l| parse_chat(l)).collect();
    assert_eq!(chat.len(), 1, "the room saw more than the 16-byte line: {seen:?}");
    assert_eq!(chat[0].text, "z".repeat(16));
}

#[test]
fn a_binary_message_gets_one_notice_and_the_session_goes_on() {
    let (server, web) = web_server(quiet_room());
    let (mut observer, observer_nick, _) = server.join("observer");
    let (mut ws, nick) = LibWs::join(web);
    observer.read_until(LINE_TIMEOUT, |l| l.contains(" joined ")).unwrap();

    ws.send(Message::binary(b"hello as bytes".to_vec()));
    assert_eq!(ws.next_text(), "! binary messages are not supported, send text");
    // A second binary message without text between: dropped without a new notice, so the next
    // thing the client gets is its own text line.
    ws.send(Message::binary(b"again".to_vec()));
    ws.send_text("text after binary");
    let own = ws.next_text();
    assert!(parse_chat(&own).is_some_and(|c| c.nick == nick && c.text == "text after binary"));
    let seen = lines_until_marker(&mut observer, &observer_nick, "marker");
    let chat: Vec<String> = seen.iter().filter_map(|l| parse_chat(l)).map(|c| c.text).collect();
    assert_eq!(chat, ["text after binary"], "the room saw: {seen:?}");
    let marker = ws.next_text();
    assert!(parse_chat(&marker).is_some_and(|c| c.text == "marker"), "{marker}");
    // After text, a binary message is told about again.
    ws.send(Message::binary(b"once more".to_vec()));
    assert_eq!(ws.next_text(), "! binary messages are not supported, send text");
}

#[test]
fn malformed_frames_are_closed_with_1002_and_reach_nobody() {
    let (server, web) = web_server(quiet_room());
    let (mut observer, observer_nick, _) = server.join("observer");
    let with_first_byte = |opcode: u8, change: fn(u8) -> u8| {
        let mut frame = ws_frame(opcode, b"secret");
        frame[0] = change(frame[0]);
        frame
    };
    let cases: [(&str, Vec<u8>); 4] = [
        ("an unmasked text frame", [&[0x81, 6][..], b"secret"].concat()),
        ("a reserved opcode", ws_frame(3, b"secret")),
        ("RSV1 without an extension", with_first_byte(1, |b| b | 0x40)),
        ("a fragmented ping", with_first_byte(9, |b| b & 0x7f)),
    ];
    for (what, frame) in cases {
        let mut ws = WsClient::connect(web, what);
        let welcome = ws.next_line();
        let (nick, _) = parse_welcome(&welcome).unwrap_or_else(|| panic!("{what}: {welcome:?}"));
        observer.read_until(LINE_TIMEOUT, |l| l.contains(&format!("* {nick} joined"))).unwrap();
        // The bad frame, then a good line that must not be read after it.
        ws.send_raw(&[frame, ws_text("after")].concat());
        assert_eq!(ws.expect_close(), 1002, "{what}");
        // The room sees it leave, and nothing of what it sent, before or after the leave.
        let left = format!("* {nick} left (");
        let mut seen = Vec::new();
        loop {
            let line = observer.next_line();
            let done = line.starts_with(&left);
            seen.push(line);
            if done {
                break;
            }
        }
        seen.extend(lines_until_marker(&mut observer, &observer_nick, &format!("behind {what}")));
        assert!(
            seen.iter().all(|l| !l.contains("secret") && !l.contains("after")),
            "{what}: the room saw the frame's payload: {seen:?}"
        );
    }
}

#[test]
fn a_ping_gets_a_pong_with_its_payload() {
    let (_server, web) = web_server(quiet_room());
    let (mut ws, _) = LibWs::join(web);
    ws.send(Message::Ping(b"are you there".to_vec().into()));
    match ws.next_message() {
        Some(Message::Pong(p)) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[test]
fn a_close_from_the_client_is_answered_and_the_room_sees_it_leave() {
    let (server, web) = web_server(quiet_room());
    let (mut observer, _, _) = server.join("observer");
    let (mut ws, nick) = LibWs::join(web);
    observer.read_until(LINE_TIMEOUT, |l| l.contains(&format!("* {nick} joined"))).unwrap();
    ws.socket.close(None).expect("send a close frame");
    let answer = loop {
        match ws.next_message() {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("the connection ended without a close frame"),
        }
    };
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Normal), "the close is not echoed");
    observer.expect_line(&format!("* {nick} left (connection closed)"));
}

#[test]
fn the_rate_limit_applies_as_on_a_plain_connection() {
    let (server, web) = web_server(
        quiet_room().chat_key(r#"rate_limit = { messages = 20, per = "1s", burst = 5 }"#),
    );
    let (mut observer, _, _) = server.join("observer");
    let (mut ws, nick) = LibWs::join(web);
    observer.read_until(LINE_TIMEOUT, |l| l.contains(&format!("* {nick} joined"))).unwrap();
    const FLOOD: usize = 45;
    let start = Instant::now();
    for i in 1..=FLOOD {
        ws.socket.write(Message::text(format!("flood-{i:03}"))).unwrap();
    }
    ws.socket.flush().unwrap();
    for i in 1..=FLOOD {
        observer.expect_chat(&nick, &format!("flood-{i:03}"));
    }
    let elapsed = start.elapsed();
    // 5 at once, then 20 per second: 40 more take ≥ 2 s. Less means no throttling; nothing lost.
    assert!(elapsed >= Duration::from_millis(1500), "flood not throttled: {elapsed:?}");
}
