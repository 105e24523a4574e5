//! `chatd client HOST[:PORT]`: a small terminal client.
//!
//! Two threads feed one loop through channels: one reads the server, one reads the terminal.
//! The loop prints what the server says as it arrives (while you type), sends what you type,
//! and ends when you type `/quit`, press Ctrl-D, or the server goes away.
//!
//! Input is read as bytes, not as UTF-8 text: a pipe may carry any bytes, and a line that is not
//! valid UTF-8 is still a line to send (with U+FFFD in place of what is invalid), never the end
//! of input.

use crossbeam_channel::{Receiver, select, unbounded};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

enum FromServer {
    Line(String),
    Closed(Option<io::Error>),
}

/// The port used when the address names none.
pub const DEFAULT_PORT: u16 = 9999;

/// Runs the client until the session ends.
pub fn run(address: &str) -> ExitCode {
    let address = with_default_port(address, DEFAULT_PORT);
    let stream = match connect(&address) {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("chatd client: cannot connect to {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match stream.try_clone() {
        Ok(reader) => spawn_server_reader(reader),
        Err(e) => {
            eprintln!("chatd client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = spawn_terminal_reader();
    session(stream, &server, &terminal)
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

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn session(
    mut stream: TcpStream,
    server: &Receiver<FromServer>,
    terminal: &Receiver<Option<String>>,
) -> ExitCode {
    let mut stdout = io::stdout();
    let mut typing = true;
    loop {
        select! {
            recv(server) -> msg => match msg {
                Ok(FromServer::Line(line)) => {
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                }
                Ok(FromServer::Closed(None)) | Err(_) => return ExitCode::SUCCESS,
                Ok(FromServer::Closed(Some(e))) => {
                    eprintln!("chatd client: connection lost: {e}");
                    return ExitCode::FAILURE;
                }
            },
            recv(terminal) -> msg => match msg {
                Ok(Some(line)) if typing => {
                    if let Err(e) = stream.write_all(format!("{line}\n").as_bytes()) {
                        eprintln!("chatd client: cannot send: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                // Ctrl-D: say goodbye and wait for the server to close.
                Ok(None) | Err(_) if typing => {
                    typing = false;
                    let _ = stream.write_all(b"/quit\n");
                    let _ = stream.shutdown(Shutdown::Write);
                }
                _ => {}
            },
        }
    }
}

fn spawn_server_reader(stream: TcpStream) -> Receiver<FromServer> {
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
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\r', '\n']).to_string();
                    if tx.send(FromServer::Line(line)).is_err() {
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

/// Sends each line of stdin (without its line end), then `None` at end of input or on a read
/// error.
fn spawn_terminal_reader() -> Receiver<Option<String>> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Some(input_line(&buf))).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// One line of input as it is sent: without its LF (or CRLF), invalid UTF-8 replaced.
fn input_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    String::from_utf8_lossy(raw).into_owned()
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
    fn input_lines_keep_their_bytes_and_replace_invalid_utf8() {
        assert_eq!(input_line(b"caf\xe9 au lait\n"), "caf\u{FFFD} au lait");
        assert_eq!(input_line(b"crlf\r\n"), "crlf");
        assert_eq!(input_line(b"no line end"), "no line end");
        assert_eq!(input_line(b"\xff\xfe\n"), "\u{FFFD}\u{FFFD}");
        assert_eq!(input_line(b"  spaced \t\n"), "  spaced \t");
    }
}
