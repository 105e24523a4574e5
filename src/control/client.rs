//! `chatd reload|status|stop`: the command-line side of the control socket.

use super::{Command, Reply, Status};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Uid, User};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request and returns the server's reply, or a message saying why there is none.
pub fn request(path: &Path, command: Command) -> Result<Reply, String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach chatd at {}: {e}", path.display()))?;
    check_server(&stream, path)?;
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

/// Refuses a server run by anyone but root, the caller or the `chatd` service user. A socket in
/// a directory others can write (`/tmp`) may have been put there by another user, whose fake
/// server could answer a reload or a stop with a lie, or learn what the caller asks.
fn check_server(stream: &UnixStream, path: &Path) -> Result<(), String> {
    let cred = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("cannot tell who serves {}: {e}", path.display()))?;
    let uid = Uid::from_raw(cred.uid());
    if uid.is_root() || uid == Uid::effective() || Some(uid) == service_user() {
        return Ok(());
    }
    let owner = match User::from_uid(uid) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    };
    Err(format!(
        "refusing to talk to {}: it is served by {owner}, which is neither root, you nor the \
         {SERVICE_USER} user",
        path.display()
    ))
}

/// The system user the packaged service runs as.
const SERVICE_USER: &str = "chatd";

/// The uid of [`SERVICE_USER`]; `None` when there is no such user.
fn service_user() -> Option<Uid> {
    User::from_name(SERVICE_USER).ok().flatten().map(|user| user.uid)
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
