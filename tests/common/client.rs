//! The test side of a connection: [`Client`], a line client with a deadline on every read that
//! tells EOF, reset and timeout apart ([`ReadError`]), and parsers for the default line formats
//! ([`parse_welcome`], [`parse_chat`]). Kept apart from the server harness because it is the
//! protocol as a user sees it, and nothing here starts or stops a process.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{CONNECT_TIMEOUT, LINE_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Why [`Client::read_line`] returned no line.
#[derive(Debug)]
pub enum ReadError {
    /// No complete line before the deadline.
    Timeout,
    /// Orderly close by the server (FIN) with nothing pending.
    Eof,
    /// Connection reset / aborted.
    Reset(io::ErrorKind),
    /// The server closed after sending an incomplete line (no LF); holds the fragment.
    Truncated(String),
    /// A line that does not end with CRLF or is not UTF-8 (lossy text).
    Malformed(String),
    /// Any other I/O error.
    Io(io::Error),
}

impl ReadError {
    /// EOF or reset: the connection is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadError::Eof | ReadError::Reset(_))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout => write!(f, "timeout"),
            ReadError::Eof => write!(f, "EOF"),
            ReadError::Reset(k) => write!(f, "connection reset ({k:?})"),
            ReadError::Truncated(s) => write!(f, "EOF after incomplete line {s:?}"),
            ReadError::Malformed(s) => write!(f, "malformed line {s:?} (no CRLF or not UTF-8)"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// A line-protocol client with deadlines. `label` names it in failure messages; every line read
/// is kept in `transcript` for those messages.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    label: String,
    transcript: Vec<String>,
}

impl Client {
    /// Connects with [`CONNECT_TIMEOUT`]; panics on failure.
    pub fn connect(addr: SocketAddr, label: &str) -> Client {
        Client::try_connect(addr, label)
            .unwrap_or_else(|e| panic!("{label}: connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr, label: &str) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::new(), label: label.to_string(), transcript: Vec::new() })
    }

    /// Connects from `source` (any port), e.g. another loopback address such as 127.0.0.2, so
    /// that tests can tell clients apart by address; panics on failure.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr, label: &str) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket.bind(&SocketAddr::new(source, 0).into()).expect("bind the source address");
        socket
            .connect_timeout(&addr.into(), CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{label}: connect to {addr} from {source}: {e}"));
        let stream = TcpStream::from(socket);
        stream.set_nodelay(true).expect("nodelay");
        Client { stream, buf: Vec::new(), label: label.to_string(), transcript: Vec::new() }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Our side's port: identifies the connection in `/proc/net/tcp*`.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local_addr").port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Every line read so far.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    fn context(&self) -> String {
        let tail = &self.transcript[self.transcript.len().saturating_sub(8)..];
        format!(
            "client {} (port {:?}), {} lines read, the last ones: {tail:#?}",
            self.label,
            self.stream.local_addr().ok(),
            self.transcript.len()
        )
    }

    /// Reads one line (without CRLF) within `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &raw[..raw.len() - 1];
                let Some(line) = line.strip_suffix(b"\r") else {
                    return Err(ReadError::Malformed(String::from_utf8_lossy(&raw).into_owned()));
                };
                let line = String::from_utf8(line.to_vec()).map_err(|e| {
                    ReadError::Malformed(String::from_utf8_lossy(e.as_bytes()).into_owned())
                })?;
                self.transcript.push(line.clone());
                return Ok(line);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).map_err(ReadError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Eof),
                Ok(0) => {
                    let frag = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Err(ReadError::Truncated(frag));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    k @ (io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe) => return Err(ReadError::Reset(k)),
                    _ => return Err(ReadError::Io(e)),
                },
            }
        }
    }

    /// Reads one line within [`LINE_TIMEOUT`]; panics (with context) if there is none.
    pub fn next_line(&mut self) -> String {
        match self.read_line(LINE_TIMEOUT) {
            Ok(l) => l,
            Err(e) => panic!("expected a line, got {e}; {}", self.context()),
        }
    }

    /// The next line must be exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        match self.read_line(LINE_TIMEOUT) {
            Ok(l) if l == expected => {}
            Ok(l) => panic!("expected line {expected:?}, got {l:?}; {}", self.context()),
            Err(e) => panic!("expected line {expected:?}, got {e}; {}", self.context()),
        }
    }

    /// The next line must be the welcome line; returns (nick, online count).
    pub fn expect_welcome(&mut self) -> (String, usize) {
        let l = self.next_line();
        parse_welcome(&l)
            .unwrap_or_else(|| panic!("expected a welcome line, got {l:?}; {}", self.context()))
    }

    /// The next line must be a chat line `HH:MM:SS <nick> text`; returns the whole line.
    pub fn expect_chat(&mut self, nick: &str, text: &str) -> String {
        let l = self.next_line();
        match parse_chat(&l) {
            Some(c) if c.nick == nick && c.text == text => l,
            _ => panic!(
                "expected chat line `HH:MM:SS <{nick}> {text}`, got {l:?}; {}",
                self.context()
            ),
        }
    }

    /// Reads lines until one satisfies `pred` (returned); the skipped ones stay in the transcript.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.read_line(deadline.saturating_duration_since(Instant::now()))?;
            if pred(&l) {
                return Ok(l);
            }
        }
    }

    /// Reads until the connection ends; returns the lines read and how it ended
    /// (`Eof`, `Reset`, `Truncated`, or `Timeout` if it did not end within `timeout`).
    pub fn read_to_close(&mut self, timeout: Duration) -> (Vec<String>, ReadError) {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            match self.read_line(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => lines.push(l),
                Err(e) => return (lines, e),
            }
        }
    }

    /// The next thing read must be an orderly EOF (no more lines, no reset).
    pub fn expect_eof(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(ReadError::Eof) => {}
            Ok(l) => panic!("expected EOF, got line {l:?}; {}", self.context()),
            Err(e) => panic!("expected EOF, got {e}; {}", self.context()),
        }
    }

    /// The connection must end (EOF or reset) with no further line.
    pub fn expect_closed(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(e) if e.is_closed() => {}
            Ok(l) => panic!("expected the connection to end, got line {l:?}; {}", self.context()),
            Err(e) => panic!("expected the connection to end, got {e}; {}", self.context()),
        }
    }

    /// Sends `line` followed by LF; panics on error.
    pub fn send_line(&mut self, line: &str) {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        if let Err(e) = self.stream.write_all(&data) {
            panic!("send {line:?}: {e}; {}", self.context());
        }
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// A second handle on the socket, e.g. to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone TcpStream")
    }

    /// Half-close: the server reads EOF, we can still read.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------------------------
// Line formats (the defaults of docs/protocol.md, "Lines out")
// ---------------------------------------------------------------------------------------------

/// `* Welcome to chatd. You are NICK. K online. Type /help for commands.` → (NICK, K).
pub fn parse_welcome(line: &str) -> Option<(String, usize)> {
    let rest = line.strip_prefix("* Welcome to chatd. You are ")?;
    let rest = rest.strip_suffix(" online. Type /help for commands.")?;
    let (nick, count) = rest.rsplit_once(". ")?;
    if nick.is_empty() || !nick.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    Some((nick.to_string(), count.parse().ok()?))
}

/// A chat line in the default format `{time} <{nick}> {text}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    pub time: String,
    pub nick: String,
    pub text: String,
}

/// Parses `HH:MM:SS <nick> text`.
pub fn parse_chat(line: &str) -> Option<ChatLine> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    let time_ok = b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && time[0..2] < *"24"
        && time[3..5] < *"60"
        && time[6..8] < *"61";
    if !time_ok {
        return None;
    }
    let rest = rest.strip_prefix('<')?;
    let (nick, text) = rest.split_once("> ")?;
    Some(ChatLine { time: time.to_string(), nick: nick.to_string(), text: text.to_string() })
}
