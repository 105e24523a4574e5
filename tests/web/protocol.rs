//! The WebSocket at `/ws` against real clients (docs/web.md, "Reactions to what a client may
//! send"): tungstenite's client for what a library sends (text, binary, ping, close), and frames
//! written byte by byte for what no library sends (unmasked, reserved opcode, RSV bits). Each
//! reaction is checked from both sides: what the web client gets, and what a plain TCP client in
//! the same room sees (or does not see).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::WebSocket;
use tungstenite::protocol::frame::coding::CloseCode;

use super::common::*;

/// A server with one plain and one web listener; returns it with the web address, read from
/// `chatd status --json` (`web_listen`).
pub fn web_server(builder: ServerBuilder) -> (Server, SocketAddr) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let config =
        builder.raw("[web]\nlisten = [\"127.0.0.1:0\"]\n").render(&dir.path().join("control.sock"));
    let server = Server::start_in(dir, &config, 1);
    let addr = wait_until(START_TIMEOUT, "a web_listen address in status --json", || {
        let out = server.run(&["status", "--json"], LINE_TIMEOUT);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["web_listen"].as_array()?.first()?.as_str()?.parse().ok()
    });
    (server, addr)
}

/// A WebSocket client (tungstenite) with a deadline on every read.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
}

impl WsClient {
    pub fn connect(addr: SocketAddr) -> WsClient {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect to /ws");
        stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let url = format!("ws://{addr}/ws");
        let (socket, response) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
        // Short reads from now on, so each wait checks its own deadline.
        socket.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert_eq!(response.status().as_u16(), 101);
        WsClient { socket }
    }

    /// Connects and reads the welcome line; returns the client and its nick.
    pub fn join(addr: SocketAddr) -> (WsClient, String) {
        let mut ws = WsClient::connect(addr);
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

/// A connection upgraded by hand, for frames no library would send.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    fn connect(addr: SocketAddr) -> RawWs {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = RawWs { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill(), "the connection ended during the upgrade");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "upgrade refused: {head}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads more; false at EOF or reset.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read from /ws: {e}"),
        }
    }

    /// The next server frame (unmasked, short): (opcode, payload); `None` at the end.
    fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "a masked server frame");
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
                    }
                    126 => (usize::MAX, 0),
                    127 => panic!("a server frame over 64 KiB"),
                    n => (usize::from(n), 2),
                };
                if start > 0 && self.buf.len() >= start + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write a raw frame");
    }
}

/// A masked client frame: `first` is FIN/RSV/opcode; a short payload.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first, 0x80 | u8::try_from(payload.len()).unwrap()];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
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
    let (mut ws, nick) = WsClient::join(web);
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
    let (mut ws, nick) = WsClient::join(web);
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
    let cases: [(&str, Vec<u8>); 4] = [
        ("an unmasked text frame", {
            let mut f = vec![0x81, 6];
            f.extend_from_slice(b"secret");
            f
        }),
        ("a reserved opcode", masked(0x83, b"secret")),
        ("RSV1 without an extension", masked(0xC1, b"secret")),
        ("a fragmented ping", masked(0x09, b"secret")),
    ];
    for (what, frame) in cases {
        let mut raw = RawWs::connect(web);
        let (op, welcome) = raw.next_frame().expect("a welcome frame");
        assert_eq!(op, 1, "{what}: the first frame is not text");
        let welcome = String::from_utf8(welcome).unwrap();
        let (nick, _) = parse_welcome(&welcome).unwrap_or_else(|| panic!("{what}: {welcome:?}"));
        observer.read_until(LINE_TIMEOUT, |l| l.contains(&format!("* {nick} joined"))).unwrap();
        // The bad frame, then a good line that must not be read after it.
        raw.send(&frame);
        raw.send(&masked(0x81, b"after"));
        let (op, payload) = raw.next_frame().unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(op, 8, "{what}: expected a close frame, got opcode {op} {payload:?}");
        assert_eq!(payload[..2], 1002u16.to_be_bytes(), "{what}: close {payload:?}");
        assert!(raw.next_frame().is_none(), "{what}: a frame after the close");
        let seen = lines_until_marker(&mut observer, &observer_nick, &format!("after {what}"));
        assert!(
            seen.iter().all(|l| !l.contains("secret") && !l.contains("after")),
            "{what}: the room saw the frame's payload: {seen:?}"
        );
        assert!(
            seen.iter().any(|l| l.starts_with(&format!("* {nick} left ("))),
            "{what}: {seen:?}"
        );
    }
}

#[test]
fn a_ping_gets_a_pong_with_its_payload() {
    let (_server, web) = web_server(quiet_room());
    let (mut ws, _) = WsClient::join(web);
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
    let (mut ws, nick) = WsClient::join(web);
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
    let (mut ws, nick) = WsClient::join(web);
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
