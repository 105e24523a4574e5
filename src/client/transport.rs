//! The client's connection to the server, plain TCP or TLS: the one place that knows which.
//!
//! Both kinds look the same to the interactive and piped modes: a [`Connection`] whose server
//! lines arrive on a channel (so they can be waited on together with the keyboard) and to which
//! lines are sent. A plain connection has a reading thread and is written directly; a TLS one
//! has one thread for both directions (`tls_stream`, which says why).

use super::shown;
use super::tls::{SetupError, TlsConnector, Trust};
use super::tls_stream::{self, HandshakeError, TlsSender};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::Duration;

/// How long one connection attempt may take before the next address (or try) is used.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reading side of a [`Connection`] passes on.
pub(super) enum FromServer {
    /// One line, without its line end, safe to print.
    Line(String),
    /// The server closed the connection (`None`) or it failed.
    Closed(Option<io::Error>),
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(super) enum OpenError {
    Connect(io::Error),
    Tls(HandshakeError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "{e}"),
            OpenError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// How to reach the server: its address, and TLS or not. Opens each (re)connection.
pub(super) struct Dialer {
    address: String,
    tls: Option<TlsConnector>,
}

impl Dialer {
    /// `address` is `HOST:PORT`; with `trust`, connections are TLS and the certificate is
    /// checked for HOST.
    pub(super) fn new(address: String, trust: Option<&Trust>) -> Result<Dialer, SetupError> {
        let tls = match trust {
            Some(trust) => Some(TlsConnector::new(trust, host_of(&address))?),
            None => None,
        };
        Ok(Dialer { address, tls })
    }

    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Connects to the first address the host resolves to that answers, then (for TLS) runs
    /// the handshake.
    pub(super) fn open(&self) -> Result<Connection, OpenError> {
        let stream = connect(&self.address).map_err(OpenError::Connect)?;
        match &self.tls {
            None => Connection::plain(stream).map_err(OpenError::Connect),
            Some(connector) => {
                let mut stream = stream;
                let mut session =
                    connector.session().map_err(|e| OpenError::Tls(HandshakeError::Tls(e)))?;
                tls_stream::handshake(&mut stream, &mut session).map_err(OpenError::Tls)?;
                let (tx, lines) = unbounded();
                let sender = tls_stream::start(stream, session, tx).map_err(OpenError::Connect)?;
                Ok(Connection { writer: Writer::Tls(sender), lines })
            }
        }
    }
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The host of `HOST:PORT`, without the brackets of an IPv6 address.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

enum Writer {
    Plain(TcpStream),
    Tls(TlsSender),
}

/// One connection to the server.
pub(super) struct Connection {
    writer: Writer,
    /// The server's lines, then [`FromServer::Closed`].
    pub(super) lines: Receiver<FromServer>,
}

impl Connection {
    fn plain(stream: TcpStream) -> io::Result<Connection> {
        let lines = spawn_reader(stream.try_clone()?);
        Ok(Connection { writer: Writer::Plain(stream), lines })
    }

    /// Sends `line` with its LF.
    pub(super) fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        match &mut self.writer {
            Writer::Plain(stream) => stream.write_all(&bytes),
            Writer::Tls(sender) => sender.send(bytes),
        }
    }

    /// Says goodbye: `/quit` (unless `line` already leaves), then end of input (for TLS,
    /// close_notify first), so the server answers everything sent so far and then closes.
    pub(super) fn leave(&mut self, line: Option<&str>) {
        let _ = self.send(line.unwrap_or("/quit"));
        let _ = match &self.writer {
            Writer::Plain(stream) => stream.shutdown(Shutdown::Write),
            Writer::Tls(sender) => sender.leave(),
        };
    }
}

fn spawn_reader(stream: TcpStream) -> Receiver<FromServer> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    let _ = tx.send(FromServer::Closed(None));
                    return;
                }
                Ok(_) => {
                    if tx.send(FromServer::Line(shown(&buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(FromServer::Closed(Some(e)));
                    return;
                }
            }
        }
    });
    rx
}

/// Cuts a byte stream into the server's lines, as `read_until(b'\n')` does for a plain one.
#[derive(Default)]
pub(super) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Passes on every line `bytes` completes; `false` once nobody listens.
    pub(super) fn push(&mut self, bytes: &[u8], lines: &Sender<FromServer>) -> bool {
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = shown(&self.partial[start..=start + end]);
            start += end + 1;
            if lines.send(FromServer::Line(line)).is_err() {
                return false;
            }
        }
        self.partial.drain(..start);
        true
    }

    /// Passes on a last line without its LF, if the stream ended in one.
    pub(super) fn finish(&mut self, lines: &Sender<FromServer>) {
        if !self.partial.is_empty() {
            let _ = lines.send(FromServer::Line(shown(&self.partial)));
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_what_a_certificate_names() {
        assert_eq!(host_of("chat.example.org:9998"), "chat.example.org");
        assert_eq!(host_of("127.0.0.1:9998"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9998"), "::1");
    }

    #[test]
    fn bytes_are_cut_into_lines_as_they_come() {
        let (tx, rx) = unbounded();
        let mut splitter = LineSplitter::default();
        assert!(splitter.push(b"one\r\ntw", &tx));
        assert!(splitter.push(b"o\n\nthr", &tx));
        splitter.finish(&tx);
        let lines: Vec<String> = rx
            .try_iter()
            .map(|m| match m {
                FromServer::Line(line) => line,
                FromServer::Closed(_) => panic!("no close was sent"),
            })
            .collect();
        assert_eq!(lines, ["one", "two", "", "thr"]);
    }
}
