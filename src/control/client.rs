//! `chatd reload|status|stop|who|say|kick|ban|unban|bans`: the command-line side of the
//! control socket.

use super::{ControlCommand, Reply, Status};
use crate::config::duration::span;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Uid, User};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends one request and returns the server's reply, or a message saying why there is none.
pub fn request(path: &Path, command: &ControlCommand) -> Result<Reply, String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach chatd at {}: {e}", path.display()))?;
    check_server(&stream, path)?;
    let timeout = match command {
        ControlCommand::Reload => Duration::from_secs(600),
        _ => Duration::from_secs(30),
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.write_all(format!("{}\n", command.to_line()).as_bytes()))
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("no answer from chatd: {e}"))?;
    if line.is_empty() {
        return Err("chatd closed the control connection without answering".into());
    }
    let reply: Reply =
        serde_json::from_str(&line).map_err(|e| format!("unreadable answer from chatd: {e}"))?;
    if *command == ControlCommand::Stop && reply.ok {
        // The server keeps this connection open until its process ends: `chatd stop` returns
        // only once the server is gone.
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .map_err(|e| format!("chatd answered but did not exit in time: {e}"))?;
    }
    Ok(reply)
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

/// The human-readable form of `chatd status`: what `--json` holds, a failed reload included.
pub fn format_status(status: &Status) -> String {
    let mut out = format!(
        "chatd {}, pid {}, up {}, generation {}, {} clients, listening on {}\n",
        status.version,
        status.pid,
        span(Duration::from_secs(status.uptime_s)),
        status.generation,
        status.clients,
        status.listen.join(", ")
    );
    if !status.tls_listen.is_empty() {
        out.push_str(&format!("tls: listening on {}\n", status.tls_listen.join(", ")));
    }
    if !status.web_listen.is_empty() {
        out.push_str(&format!("web: listening on {}\n", status.web_listen.join(", ")));
    }
    match &status.last_reload {
        None => out.push_str("last reload: none\n"),
        Some(r) if r.ok => {
            out.push_str(&format!("last reload: ok in {:.3}s\n", r.duration_s));
        }
        Some(r) => out.push_str(&format!(
            "last reload: FAILED: {}\n",
            r.error.as_deref().unwrap_or("unknown reason")
        )),
    }
    out.push_str("slot  pid       generation  version   clients  uptime\n");
    for w in &status.workers {
        let version = if w.version.is_empty() { "-" } else { &w.version };
        out.push_str(&format!(
            "{:<5} {:<9} {:<11} {:<9} {:<8} {}\n",
            w.slot,
            w.pid,
            w.generation,
            version,
            w.clients,
            span(Duration::from_secs(w.uptime_s))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ReloadOutcome, WorkerStatus};

    fn status(last_reload: Option<ReloadOutcome>) -> Status {
        Status {
            version: "1.2.3".into(),
            generation: 2,
            listen: vec!["127.0.0.1:7000".into()],
            clients: 5,
            workers: vec![WorkerStatus {
                slot: 0,
                pid: 42,
                generation: 2,
                version: "1.2.3".into(),
                clients: 5,
                uptime_s: 3720,
            }],
            pid: 41,
            uptime_s: 99,
            last_reload,
            tls_listen: Vec::new(),
            web_listen: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn table_shows_version_pid_uptime_and_a_failed_reload() {
        let failed = ReloadOutcome {
            ok: false,
            error: Some("chatd.toml:3:1: bad".into()),
            duration_s: 0.001,
        };
        let text = format_status(&status(Some(failed)));
        assert!(
            text.starts_with("chatd 1.2.3, pid 41, up 1m39s, generation 2, 5 clients"),
            "{text}"
        );
        assert!(text.contains("last reload: FAILED: chatd.toml:3:1: bad\n"), "{text}");
        assert!(text.contains("0     42        2           1.2.3     5        1h02m\n"), "{text}");
        assert!(format_status(&status(None)).contains("last reload: none\n"));
    }
}
