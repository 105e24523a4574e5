//! `chatd reload|status|stop`: the command-line side of the control socket.

use super::{Command, Reply, Status};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request and returns the server's reply, or a message saying why there is none.
pub fn request(path: &Path, command: Command) -> Result<Reply, String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach chatd at {}: {e}", path.display()))?;
    let timeout = match command {
        Command::Reload => Duration::from_secs(600),
        Command::Status | Command::Stop => Duration::from_secs(30),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.write_all(format!("{}\n", command.as_str()).as_bytes()))
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from chatd: {e}"))?;
    if line.is_empty() {
        return Err("chatd closed the control connection without answering".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("unreadable answer from chatd: {e}"))
}

/// The human-readable form of `chatd status`.
pub fn format_status(status: &Status) -> String {
    let mut out = format!(
        "chatd {}, generation {}, {} clients, listening on {}\n",
        status.version,
        status.generation,
        status.clients,
        status.listen.join(", ")
    );
    out.push_str("slot  pid       generation  clients  uptime\n");
    for w in &status.workers {
        out.push_str(&format!(
            "{:<5} {:<9} {:<11} {:<8} {}s\n",
            w.slot, w.pid, w.generation, w.clients, w.uptime_s
        ));
    }
    out
}
