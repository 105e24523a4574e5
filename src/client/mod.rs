//! `chatd client HOST[:PORT]`: the bundled client, in one of two modes.
//!
//! On a terminal (stdin and stdout both ttys) it is an interactive chat client built on a line
//! editor ([`interactive`]): incoming lines appear above the line being typed, and a lost
//! connection is re-established. Otherwise it is a filter ([`piped`]): stdin's lines go to the
//! server as they are, what the server says goes to stdout, and it exits after the server has
//! answered the end of input.
//!
//! Both modes read the server through a [`Connection`], which shows every line as text: the
//! server already removes control characters and escape sequences from what clients send, but
//! the client applies the same rule again, so no server (an older one, someone else's, or one in
//! the middle) can move the cursor, retitle the window or ring the bell of the person reading.

mod backoff;
mod interactive;
mod nick;
mod piped;

use crate::protocol::sanitize::sanitize;
use crossbeam_channel::{Receiver, unbounded};
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

/// The port used when the address names none.
pub const DEFAULT_PORT: u16 = 9999;

/// How long one connection attempt may take before the next address (or try) is used.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the client until the session ends.
pub fn run(address: &str) -> ExitCode {
    let address = with_default_port(address, DEFAULT_PORT);
    let connection = match Connection::open(&address) {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("chatd client: cannot connect to {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        match interactive::Terminal::new() {
            Ok(terminal) => return terminal.run(&address, connection),
            // A terminal the line editor cannot drive (TERM=dumb): read it like a pipe.
            Err(e) => log::debug!("line editor unavailable ({e}); reading stdin as a pipe"),
        }
    }
    piped::run(connection)
}

/// `address` with `:port` appended when it has none: `host`, `127.0.0.1`, `[::1]` and a bare
/// IPv6 address like `::1` get it; `host:p` and `[::1]:p` are kept as they are.
pub fn with_default_port(address: &str, port: u16) -> String {
    if address.starts_with('[') {
        return if address.ends_with(']') { format!("{address}:{port}") } else { address.into() };
    }
    match address.matches(':').count() {
        0 => format!("{address}:{port}"),
        1 => address.into(),
        // More than one colon without brackets: an IPv6 address on its own.
        _ => format!("[{address}]:{port}"),
    }
}

/// What the reader thread of a [`Connection`] passes on.
enum FromServer {
    /// One line, without its line end, safe to print.
    Line(String),
    /// The server closed the connection (`None`) or it failed.
    Closed(Option<io::Error>),
}

/// One TCP connection to the server: lines are written directly, and a thread reads the
/// server's lines into a channel so the caller can wait on them together with the keyboard.
struct Connection {
    stream: TcpStream,
    lines: Receiver<FromServer>,
}

impl Connection {
    /// Connects to the first address `address` resolves to that answers.
    fn open(address: &str) -> io::Result<Connection> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for addr in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let lines = spawn_reader(stream.try_clone()?);
                    return Ok(Connection { stream, lines });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends `line` with its LF.
    fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stream.write_all(&bytes)
    }

    /// Says goodbye: `/quit` (unless `line` already leaves), then end of input, so the server
    /// answers everything sent so far and then closes.
    fn leave(&mut self, line: Option<&str>) {
        let _ = self.send(line.unwrap_or("/quit"));
        let _ = self.stream.shutdown(Shutdown::Write);
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

/// A line from the server as it is shown: without its CRLF, invalid UTF-8 replaced, and
/// without anything a terminal would act on (`src/protocol/sanitize.rs`, the rule the server
/// applies to what clients send).
fn shown(raw: &[u8]) -> String {
    sanitize(without_line_end(raw))
}

/// A line without its LF or CRLF.
fn without_line_end(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        let cases = [
            ("127.0.0.1", "127.0.0.1:9999"),
            ("127.0.0.1:1234", "127.0.0.1:1234"),
            ("localhost", "localhost:9999"),
            ("chat.example:7", "chat.example:7"),
            ("[::1]", "[::1]:9999"),
            ("[::1]:1234", "[::1]:1234"),
            ("::1", "[::1]:9999"),
            ("fe80::1:2", "[fe80::1:2]:9999"),
        ];
        for (given, wanted) in cases {
            assert_eq!(with_default_port(given, 9999), wanted, "{given}");
        }
    }

    #[test]
    fn server_lines_are_shown_as_text() {
        assert_eq!(shown(b"12:00:00 <bob> hi\r\n"), "12:00:00 <bob> hi");
        assert_eq!(shown(b"\x1b[2J\x1b]0;owned\x07cleared?\x08\r\n"), "cleared?");
        assert_eq!(shown(b"bell\x07 and \xc2\x9b31m csi\n"), "bell and  csi");
        assert_eq!(shown(b"caf\xe9\tok\r\n"), "caf\u{FFFD}\tok");
        assert_eq!(shown(b"no line end"), "no line end");
    }
}
