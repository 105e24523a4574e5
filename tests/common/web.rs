//! WebSocket clients for the web tests. [`WsClient`] is tungstenite's client over a std
//! `TcpStream`, its text messages turned into lines so the tests read web clients like any
//! others. The hand-written pieces ([`ws_upgrade`], [`ws_frame`], [`Deframer`]) remain for
//! frames no library sends and for the reload fleet, which reads many sockets from poll(2).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::WebSocket;

use super::{CONNECT_TIMEOUT, LINE_TIMEOUT};

/// Sends the upgrade request for `/ws` and reads the answer within [`LINE_TIMEOUT`]; returns
/// what followed the answer (the first frames).
pub fn ws_upgrade(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let request = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).map_err(|e| format!("send the upgrade: {e}"))?;
    let head = read_head(stream)?;
    let (answer, rest) = head;
    if !answer.starts_with("HTTP/1.1 101 ") {
        return Err(format!("not upgraded: {answer:?}"));
    }
    Ok(rest)
}

/// Reads an HTTP answer's head; returns it and the bytes after it.
pub fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no HTTP answer within {LINE_TIMEOUT:?} (read {buf:?})"));
        }
        stream.set_read_timeout(Some(deadline - now)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("EOF in the HTTP answer (read {buf:?})")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read the HTTP answer: {e}")),
        }
    }
}

/// A client frame: masked, FIN set, `opcode` (1 text, 2 binary, 8 close, 9 ping).
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A text message as a client sends it.
pub fn ws_text(line: &str) -> Vec<u8> {
    ws_frame(1, line.as_bytes())
}

/// Server frames in, lines out: each text frame becomes its payload and CRLF.
#[derive(Default)]
pub struct Deframer {
    raw: Vec<u8>,
}

/// What the server sent besides text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A close frame with this code (1005 when it had none).
    Close(u16),
    /// A frame a server must not send, or any other opcode: described.
    Odd(String),
}

impl Deframer {
    /// Takes bytes read; appends the text frames' lines to `lines` and returns the other
    /// frames seen.
    pub fn push(&mut self, bytes: &[u8], lines: &mut Vec<u8>) -> Vec<Control> {
        self.raw.extend_from_slice(bytes);
        let mut seen = Vec::new();
        let mut at = 0;
        while let Some(&[b0, b1]) = self.raw.get(at..at + 2) {
            let (header, len) = match b1 & 0x7f {
                126 => match self.raw.get(at + 2..at + 4) {
                    Some(x) => (4, u16::from_be_bytes([x[0], x[1]]) as usize),
                    None => break,
                },
                127 => match self.raw.get(at + 2..at + 10) {
                    Some(x) => (10, u64::from_be_bytes(x.try_into().unwrap()) as usize),
                    None => break,
                },
                n => (2, n as usize),
            };
            let Some(payload) = self.raw.get(at + header..at + header + len) else { break };
            if b1 & 0x80 != 0 || b0 & 0x70 != 0 || b0 & 0x80 == 0 {
                seen.push(Control::Odd(format!("a frame with header {b0:#x} {b1:#x}")));
            }
            match b0 & 0x0f {
                1 => {
                    lines.extend_from_slice(payload);
                    lines.extend_from_slice(b"\r\n");
                }
                8 => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    seen.push(Control::Close(code));
                }
                op => seen.push(Control::Odd(format!("opcode {op}"))),
            }
            at += header + len;
        }
        self.raw.drain(..at);
        seen
    }
}

/// A WebSocket line client (tungstenite's) with deadlines on every read, like `Client`.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
    lines: Vec<u8>,
    /// Non-text frames the server sent.
    pub controls: Vec<Control>,
    label: String,
}

impl WsClient {
    /// Connects to `addr` (a web listener, or a TLS bridge to one) and upgrades.
    pub fn connect(addr: SocketAddr, label: &str) -> WsClient {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{label}: connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(LINE_TIMEOUT)).expect("read timeout");
        let url = format!("ws://{addr}/ws");
        let (socket, response) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("{label}: WebSocket handshake with {url}: {e}"));
        assert_eq!(response.status().as_u16(), 101, "{label}: not upgraded");
        WsClient { socket, lines: Vec::new(), controls: Vec::new(), label: label.to_string() }
    }

    pub fn send_line(&mut self, line: &str) {
        let label = &self.label;
        self.socket.send(Message::text(line)).unwrap_or_else(|e| panic!("{label}: send: {e}"));
    }

    /// Writes bytes past the library (frames no library sends).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let label = &self.label;
        self.socket.get_mut().write_all(bytes).unwrap_or_else(|e| panic!("{label}: send: {e}"));
    }

    /// The next line within `timeout`; `Err` on timeout, EOF or a close frame.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.lines.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = self.lines.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&raw[..pos]).into_owned());
            }
            if let Some(close) = self.controls.iter().find(|c| matches!(c, Control::Close(_))) {
                return Err(format!("closed: {close:?}"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no line within {timeout:?}"));
            }
            self.socket.get_ref().set_read_timeout(Some(deadline - now)).expect("read timeout");
            match self.socket.read() {
                Ok(Message::Text(t)) => {
                    self.lines.extend_from_slice(t.as_bytes());
                    self.lines.extend_from_slice(b"\r\n");
                }
                Ok(Message::Close(frame)) => {
                    self.controls.push(Control::Close(frame.map_or(1005, |f| f.code.into())));
                }
                Ok(other) => self.controls.push(Control::Odd(format!("{other:?}"))),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The next line, within [`LINE_TIMEOUT`]; panics otherwise.
    pub fn next_line(&mut self) -> String {
        let label = self.label.clone();
        self.read_line(LINE_TIMEOUT).unwrap_or_else(|e| panic!("{label}: {e}"))
    }

    /// Reads lines until one equals `want`; panics with what came instead.
    pub fn expect_line(&mut self, want: &str) {
        let got = self.next_line();
        assert_eq!(got, want, "{}", self.label);
    }

    /// Reads a chat line from `nick` saying `text`; panics on anything else.
    pub fn expect_chat_line(&mut self, nick: &str, text: &str) {
        let line = self.next_line();
        let chat = super::parse_chat(&line);
        assert!(chat.is_some_and(|c| c.nick == nick && c.text == text), "{}: {line:?}", self.label);
    }

    /// Reads until the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_line(LINE_TIMEOUT) {
                Ok(_) => continue,
                Err(e) => {
                    let code = self.controls.iter().find_map(|c| match c {
                        Control::Close(code) => Some(*code),
                        Control::Odd(_) => None,
                    });
                    return code.unwrap_or_else(|| panic!("{}: no close frame ({e})", self.label));
                }
            }
        }
    }
}
