//! `chatd client HOST[:PORT]`: the bundled client, in one of two modes.
//!
//! On a terminal (stdin and stdout both ttys) it is an interactive chat client built on a line
//! editor ([`interactive`]): incoming lines appear above the line being typed, and a lost
//! connection is re-established. Otherwise it is a filter ([`piped`]): stdin's lines go to the
//! server as they are, what the server says goes to stdout, and it exits after the server has
//! answered the end of input.
//!
//! Both modes talk to the server through a `transport::Connection`, plain TCP or TLS (`--tls`,
//! [`tls`]), and see every line as text: the server already removes control characters and
//! escape sequences from what clients send, but the client applies the same rule again, so no server (an older one, someone else's, or one in
//! the middle) can move the cursor, retitle the window or ring the bell of the person reading.

mod backoff;
mod interactive;
mod nick;
mod piped;
mod tls;
mod tls_stream;
mod transport;

pub use tls::Trust;

use crate::protocol::sanitize::sanitize;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use transport::Dialer;

/// The port used when the address names none.
pub const DEFAULT_PORT: u16 = 9999;
/// The port used with `--tls` when the address names none.
pub const DEFAULT_TLS_PORT: u16 = 9998;

/// `chatd client`'s command line.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server address: HOST[:PORT], e.g. 127.0.0.1, [::1]:9999 (port 9999 if none, 9998 with
    /// --tls).
    #[arg(default_value = "127.0.0.1")]
    pub address: String,
    /// Connect with TLS 1.3; the server's certificate must be valid for HOST.
    #[arg(long)]
    pub tls: bool,
    /// Trust only the CA certificates in this PEM file (default: the system's).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Accept any certificate: encrypted, but anyone on the way can pose as the server.
    #[arg(long, requires = "tls", conflicts_with = "ca")]
    pub insecure: bool,
}

impl Args {
    /// `HOST:PORT`, with the default port of the mode when none was given.
    pub fn address(&self) -> String {
        with_default_port(&self.address, if self.tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT })
    }

    /// Which certificates to accept, for a TLS connection.
    pub fn trust(&self) -> Option<Trust> {
        match (&self.ca, self.insecure) {
            _ if !self.tls => None,
            (Some(ca), _) => Some(Trust::Ca(ca.clone())),
            (None, true) => Some(Trust::Insecure),
            (None, false) => Some(Trust::System),
        }
    }
}

/// Runs the client until the session ends.
pub fn run(args: &Args) -> ExitCode {
    let address = args.address();
    let trust = args.trust();
    if trust == Some(Trust::Insecure) {
        eprintln!(
            "chatd client: warning: --insecure: the server's certificate is not checked, so \
             anyone on the way can pose as the server and read this conversation"
        );
    }
    let dialer = match Dialer::new(address, trust.as_ref()) {
        Ok(dialer) => dialer,
        Err(e) => {
            eprintln!("chatd client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let connection = match dialer.open() {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("chatd client: cannot connect to {}: {e}", dialer.address());
            return ExitCode::FAILURE;
        }
    };
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        match interactive::Terminal::new() {
            Ok(terminal) => return terminal.run(&dialer, connection),
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
