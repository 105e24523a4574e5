//! WebSocket clients for the web tests, spoken by tungstenite: [`ws_connect`] upgrades a
//! connection (the reload fleet drives the sockets it returns from poll(2)), and [`WsClient`]
//! turns one's text messages into lines so the tests read web clients like any others.
//! [`ws_frame`] writes by hand only the frames no library sends.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::{WebSocket, WebSocketConfig};

use super::{CONNECT_TIMEOUT, LINE_TIMEOUT};

/// Connects to `addr` (a web listener, or a TLS bridge to one) and upgrades with tungstenite's
/// client, with deadlines on connect and on the answer. The socket keeps in its read buffer
/// whatever arrived with the answer (the first frames), so nothing sent right after the 101 is
/// lost; it stays blocking, with [`LINE_TIMEOUT`] as its read timeout.
pub fn ws_connect(
    addr: SocketAddr,
    config: WebSocketConfig,
) -> Result<WebSocket<TcpStream>, String> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    stream.set_read_timeout(Some(LINE_TIMEOUT)).map_err(|e| format!("read timeout: {e}"))?;
    let url = format!("ws://{addr}/ws");
    match tungstenite::client::client_with_config(url.as_str(), stream, Some(config)) {
        Ok((socket, _)) => Ok(socket),
        // A blocking stream only stops a handshake when its read timeout expires.
        Err(HandshakeError::Interrupted(_)) => {
            Err(format!("WebSocket handshake with {url}: no answer within {LINE_TIMEOUT:?}"))
        }
        Err(HandshakeError::Failure(e)) => Err(format!("WebSocket handshake with {url}: {e}")),
    }
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

/// What the server sent besides text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A close frame with this code (1005 when it had none).
    Close(u16),
    /// A frame a server must not send, or any other opcode: described.
    Odd(String),
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
        let socket =
            ws_connect(addr, WebSocketConfig::default()).unwrap_or_else(|e| panic!("{label}: {e}"));
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
