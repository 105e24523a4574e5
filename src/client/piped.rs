//! The client as a filter (stdin not a terminal): stdin's lines go to the server, the server's
//! lines go to stdout, and at end of input the client says goodbye and exits once the server has
//! answered everything and closed. A connection that ends ends the run: a script wants an exit
//! status, not a reconnect.
//!
//! Input is read as bytes, not as UTF-8 text: a pipe may carry any bytes, and a line that is not
//! valid UTF-8 is still a line to send (with U+FFFD in place of what is invalid), never the end
//! of input.

use super::transport::{Connection, FromServer};
use super::without_line_end;
use crossbeam_channel::{Receiver, select, unbounded};
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::thread;

/// Runs until the server closes the connection.
pub(super) fn run(mut connection: Connection) -> ExitCode {
    let input = spawn_stdin_reader();
    let mut stdout = io::stdout();
    let mut reading = true;
    loop {
        select! {
            recv(connection.lines) -> msg => match msg {
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
            recv(input) -> msg => match msg {
                Ok(Some(line)) if reading => {
                    if let Err(e) = connection.send(&line) {
                        eprintln!("chatd client: cannot send: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                // End of input: wait for the server's answers and its close.
                Ok(None) | Err(_) if reading => {
                    reading = false;
                    connection.leave(None);
                }
                _ => {}
            },
        }
    }
}

/// Sends each line of stdin (without its line end), then `None` at end of input or on a read
/// error.
fn spawn_stdin_reader() -> Receiver<Option<String>> {
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
    String::from_utf8_lossy(without_line_end(raw)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_keep_their_bytes_and_replace_invalid_utf8() {
        assert_eq!(input_line(b"caf\xe9 au lait\n"), "caf\u{FFFD} au lait");
        assert_eq!(input_line(b"crlf\r\n"), "crlf");
        assert_eq!(input_line(b"no line end"), "no line end");
        assert_eq!(input_line(b"\xff\xfe\n"), "\u{FFFD}\u{FFFD}");
        assert_eq!(input_line(b"  spaced \t\n"), "  spaced \t");
    }
}
