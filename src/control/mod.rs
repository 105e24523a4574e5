//! The control socket: how `chatd reload|status|stop` talk to a running supervisor.
//!
//! A Unix stream socket (mode 0600, peer credentials checked) carrying one request line and one
//! JSON reply line per connection. It is served by a small thread of its own so that a
//! synchronous `chatd reload` can wait for the reload to finish without the supervisor's event
//! loop ever blocking on a client.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

/// What a control client can ask: `chatd reload|status|stop` (a chat client's `/nick` and such
/// are `protocol::command::Command`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    Status,
    Reload,
    Stop,
}

impl ControlCommand {
    pub fn parse(word: &str) -> Option<ControlCommand> {
        match word.trim() {
            "status" => Some(ControlCommand::Status),
            "reload" => Some(ControlCommand::Reload),
            "stop" => Some(ControlCommand::Stop),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Reload => "reload",
            ControlCommand::Stop => "stop",
        }
    }
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
    /// The cluster link: none in this release, always `null`.
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
}

impl Reply {
    pub fn done(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: Some(message.into()), status: None }
    }

    pub fn failed(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: Some(message.into()), status: None }
    }

    pub fn status(status: Status) -> Reply {
        Reply { ok: true, message: None, status: Some(status) }
    }
}
