//! The control socket: how `chatd reload|status|stop` and the operators' commands (`who`,
//! `say`, `kick`, `ban`, `unban`, `bans`) talk to a running supervisor.
//!
//! A Unix stream socket (mode 0600, peer credentials checked) carrying one request line and one
//! JSON reply line per connection. It is served by a small thread of its own so that a
//! synchronous `chatd reload` can wait for the reload to finish without the supervisor's event
//! loop ever blocking on a client.

pub mod client;
pub mod server;
pub mod tables;

use serde::{Deserialize, Serialize};

/// What a control client can ask: `chatd reload|status|stop` and the operators' commands (a
/// chat client's `/nick` and such are `protocol::command::Command`).
///
/// On the socket, the three oldest are a bare word (`status`), as the first releases sent them;
/// every command may also be one JSON object such as `{"command":"kick","nick":"bob"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlCommand {
    Status,
    Reload,
    Stop,
    /// Every session.
    Who,
    /// A notice to the room.
    Say {
        text: String,
    },
    Kick {
        nick: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// `target` is `ADDR` or `ADDR/PREFIX`; no `duration_ms` = until lifted.
    Ban {
        target: String,
        #[serde(default)]
        duration_ms: Option<u64>,
        #[serde(default)]
        reason: Option<String>,
    },
    Unban {
        target: String,
    },
    Bans,
}

impl ControlCommand {
    pub fn parse(line: &str) -> Option<ControlCommand> {
        let line = line.trim();
        if line.starts_with('{') {
            return serde_json::from_str(line).ok();
        }
        match line {
            "status" => Some(ControlCommand::Status),
            "reload" => Some(ControlCommand::Reload),
            "stop" => Some(ControlCommand::Stop),
            _ => None,
        }
    }

    /// The request line, without its newline.
    pub fn to_line(&self) -> String {
        match self {
            ControlCommand::Status | ControlCommand::Reload | ControlCommand::Stop => {
                self.as_str().to_owned()
            }
            _ => serde_json::to_string(self).unwrap_or_default(),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Reload => "reload",
            ControlCommand::Stop => "stop",
            ControlCommand::Who => "who",
            ControlCommand::Say { .. } => "say",
            ControlCommand::Kick { .. } => "kick",
            ControlCommand::Ban { .. } => "ban",
            ControlCommand::Unban { .. } => "unban",
            ControlCommand::Bans => "bans",
        }
    }
}

/// One session in `chatd who --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WhoEntry {
    pub nick: String,
    /// `IP:PORT`.
    pub addr: String,
    /// The worker slot serving it.
    pub slot: usize,
    /// `"tcp"` or `"tls"`; `"-"` when its worker did not answer in time, as `idle_s`.
    pub transport: String,
    pub connected_s: u64,
    /// `null` when its worker did not answer in time (it may be busy, or moving the session).
    pub idle_s: Option<u64>,
    /// Output waiting to be written to it, in bytes; `null` as `idle_s`.
    pub queued_bytes: Option<u64>,
}

/// One ban in `chatd bans --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// `ADDR` or `ADDR/PREFIX`.
    pub target: String,
    /// Seconds left; `null` = until lifted (or, for the config's, for good).
    pub left_s: Option<u64>,
    pub reason: Option<String>,
    /// `"command"` (`chatd ban`) or `"config"` (`[moderation] banned`).
    pub source: String,
}

/// One worker in `chatd status --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: u32,
    pub generation: u64,
    /// The release the worker runs (empty until it said Hello).
    #[serde(default)]
    pub version: String,
    pub clients: usize,
    pub uptime_s: u64,
}

/// How the last reload went, in `chatd status --json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// Why it failed; `null` when it succeeded.
    pub error: Option<String>,
    pub duration_s: f64,
}

/// `chatd status --json`. The keys after `workers` are newer than the first releases, hence
/// their defaults: a newer `chatd status` still reads an older server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Status {
    pub version: String,
    pub generation: u64,
    pub listen: Vec<String>,
    pub clients: usize,
    pub workers: Vec<WorkerStatus>,
    /// The supervisor's pid.
    #[serde(default)]
    pub pid: u32,
    /// Since the supervisor started.
    #[serde(default)]
    pub uptime_s: u64,
    /// `null` until the first reload.
    #[serde(default)]
    pub last_reload: Option<ReloadOutcome>,
    /// TLS and web listeners: none in this release, always empty.
    #[serde(default)]
    pub tls_listen: Vec<String>,
    #[serde(default)]
    pub web_listen: Vec<String>,
    /// The cluster room (SPEC §11, docs/control.md): `null` when `[cluster]` is off.
    #[serde(default)]
    pub cluster: Option<serde_json::Value>,
}

/// The reply line.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Vec<WhoEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bans: Option<Vec<BanEntry>>,
}

impl Reply {
    pub fn done(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: Some(message.into()), ..Reply::empty() }
    }

    pub fn failed(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: Some(message.into()), ..Reply::empty() }
    }

    pub fn status(status: Status) -> Reply {
        Reply { ok: true, status: Some(status), ..Reply::empty() }
    }

    pub fn who(who: Vec<WhoEntry>) -> Reply {
        Reply { ok: true, who: Some(who), ..Reply::empty() }
    }

    pub fn bans(bans: Vec<BanEntry>) -> Reply {
        Reply { ok: true, bans: Some(bans), ..Reply::empty() }
    }

    fn empty() -> Reply {
        Reply { ok: true, message: None, status: None, who: None, bans: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_words_or_json() {
        assert_eq!(ControlCommand::parse("status\n"), Some(ControlCommand::Status));
        assert_eq!(ControlCommand::Reload.to_line(), "reload");
        let kick = ControlCommand::Kick { nick: "bob".into(), reason: None };
        assert_eq!(kick.to_line(), r#"{"command":"kick","nick":"bob","reason":null}"#);
        assert_eq!(ControlCommand::parse(&kick.to_line()), Some(kick));
        assert_eq!(
            ControlCommand::parse(r#"{"command":"say","text":"hi"}"#).map(|c| c.as_str()),
            Some("say")
        );
        assert_eq!(ControlCommand::parse(r#"{"command":"say","text":"hi","x":1}"#), None);
        assert_eq!(ControlCommand::parse(r#"{"command":"who"}"#), Some(ControlCommand::Who));
        assert_eq!(ControlCommand::parse("who"), None);
    }
}
