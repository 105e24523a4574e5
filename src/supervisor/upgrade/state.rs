//! The supervisor's state as it crosses an exec: a versioned, self-describing record.
//!
//! JSON, so that a newer release reads an older one's state with nothing but defaults for the
//! fields it added; [`VERSION`] goes up when a field changes meaning or is removed, and a
//! binary refuses a state of a version newer than its own (the probe says so, and the upgrade
//! does not happen). Descriptors are recorded by number: they cross the exec open, at the same
//! numbers. Times are ages and delays in milliseconds, since an `Instant` means nothing to
//! another process image (the monotonic clock they are taken from is the same, though).
//!
//! Nothing in here depends on the exec: the same bytes could be kept in a memory file (which is
//! how they travel already) held by someone else while no supervisor runs.

use crate::bus::WorkerCounters;
use crate::bus::message::SessionId;
use crate::control::ReloadOutcome;
use crate::metrics::{Histogram, RoomCounters};
use crate::moderation::Target;
use crate::supervisor::workers::Lifecycle;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What every state starts with, so a reader knows what it holds before reading it.
pub const FORMAT: &str = "chatd-supervisor-state";
/// The version of the layout below. 1: the first.
pub const VERSION: u32 = 1;

/// The first fields of every version: enough to refuse what this binary cannot read.
#[derive(Serialize, Deserialize, Debug)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The release that wrote it.
    pub release: String,
}

/// Everything a supervisor needs to go on where another left off.
#[derive(Serialize, Deserialize, Debug)]
pub struct SupervisorState {
    #[serde(flatten)]
    pub header: Header,
    pub exe: PathBuf,
    pub config_path: PathBuf,
    /// The config the running workers were started with (validated by the writer).
    pub config_text: String,
    pub listen_config: Vec<SocketAddr>,
    pub listen: Vec<SocketAddr>,
    /// The bus frame version the workers speak (`bus::frame::VERSION` of the writer).
    pub bus_frame_version: u8,
    pub slots: Vec<SavedSlot>,
    pub workers: Vec<SavedWorker>,
    pub next_worker: usize,
    pub generation: u64,
    pub hub: SavedHub,
    /// The control socket's listening descriptor.
    pub control_fd: RawFd,
    pub metrics: SavedMetrics,
    pub uptime_ms: u64,
    pub last_watchdog_ms: u64,
    pub last_reload: Option<ReloadOutcome>,
    /// The last `STATUS=` sent.
    pub status_text: String,
    /// The next `chatd who` round's id.
    pub next_inspect: u64,
    /// The reload that asked for the upgrade, to be carried on by the new binary.
    pub reload: Option<SavedReload>,
    /// Cluster mode's door and waiting joins (`hub/cluster/saved.rs`, postcard); `None`
    /// outside cluster mode.
    #[serde(default, with = "serde_bytes")]
    pub cluster: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedSlot {
    pub listeners: Vec<RawFd>,
    pub worker: Option<usize>,
    pub backoff_ms: u64,
    /// A restart due in this long.
    pub restart_in_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedWorker {
    pub id: usize,
    pub slot: usize,
    pub generation: u64,
    pub pid: u32,
    /// `None` once its bus is closed (it waits to be reaped).
    pub bus: Option<SavedBus>,
    pub age_ms: u64,
    pub state: Lifecycle,
    pub version: String,
    pub handoff_version: u32,
    pub heartbeat_age_ms: u64,
    pub took_over: bool,
    pub counters: WorkerCounters,
}

/// A worker's bus: the socket and what was buffered on either side of it.
#[derive(Serialize, Deserialize, Debug)]
pub struct SavedBus {
    pub fd: RawFd,
    #[serde(with = "serde_bytes")]
    pub unread: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub unsent: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedHub {
    pub seq: u64,
    pub next_session: u64,
    pub next_guest: u64,
    pub members: Vec<SavedMember>,
    /// The replay ring, oldest first.
    pub events: Vec<SavedEvent>,
    /// The `/history` lines, oldest first.
    pub history: Vec<String>,
    pub counters: RoomCounters,
    /// Bans from `chatd ban` (the config's come from the config).
    pub bans: Vec<SavedBan>,
    pub bans_changed: bool,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedMember {
    pub session: SessionId,
    pub nick: String,
    pub ip: IpAddr,
    pub addr: String,
    pub worker: usize,
    pub age_ms: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedEvent {
    pub seq: u64,
    pub age_ms: u64,
    pub skip: Option<SessionId>,
    pub line: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedBan {
    pub target: Target,
    /// `None`: until lifted.
    pub left_ms: Option<u64>,
    pub reason: Option<String>,
}

/// The metrics' counts and endpoint.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct SavedMetrics {
    /// `[metrics] listen` as configured, and the listening descriptor serving it.
    pub listen: Option<SocketAddr>,
    pub fd: Option<RawFd>,
    pub retired: WorkerCounters,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub reload_durations: Histogram,
    pub worker_restarts: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct SavedReload {
    /// The `chatd reload` client waiting for the answer (none for SIGHUP).
    pub client_fd: Option<RawFd>,
    /// The config file as read for this reload.
    pub config_text: String,
    pub started_ms: u64,
    /// The release that was running.
    pub from_release: String,
}

/// Why a state cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum StateError {
    NotAState(String),
    Newer { version: u32, release: String },
    Malformed(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::NotAState(e) => write!(f, "not a supervisor state: {e}"),
            StateError::Newer { version, release } => write!(
                f,
                "the state is of format version {version} (written by chatd {release}); this \
                 binary reads up to version {VERSION}"
            ),
            StateError::Malformed(e) => write!(f, "unreadable supervisor state: {e}"),
        }
    }
}

impl SupervisorState {
    pub fn header() -> Header {
        Header { format: FORMAT.into(), version: VERSION, release: crate::version::VERSION.into() }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a state, checking its header first.
    pub fn decode(bytes: &[u8]) -> Result<SupervisorState, StateError> {
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| StateError::NotAState(e.to_string()))?;
        if header.format != FORMAT {
            return Err(StateError::NotAState(format!("format {:?}", header.format)));
        }
        if header.version > VERSION {
            return Err(StateError::Newer { version: header.version, release: header.release });
        }
        serde_json::from_slice(bytes).map_err(|e| StateError::Malformed(e.to_string()))
    }
}

/// Milliseconds since `at`.
pub fn age_ms(at: Instant) -> u64 {
    millis(at.elapsed())
}

/// Milliseconds until `at` (0 when it is past).
pub fn left_ms(at: Instant) -> u64 {
    millis(at.saturating_duration_since(Instant::now()))
}

/// The instant `ms` milliseconds ago (now, should the clock not reach back that far).
pub fn ago(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)
}

/// The instant `ms` milliseconds from now.
pub fn from_now(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A state with a little of everything, as a supervisor of one worker would write it.
    pub(in crate::supervisor::upgrade) fn sample() -> SupervisorState {
        SupervisorState {
            header: SupervisorState::header(),
            exe: "/usr/bin/chatd".into(),
            config_path: "/etc/chatd/chatd.toml".into(),
            config_text: String::new(),
            listen_config: vec!["127.0.0.1:0".parse().unwrap()],
            listen: vec!["127.0.0.1:9999".parse().unwrap()],
            bus_frame_version: crate::bus::frame::VERSION,
            slots: vec![SavedSlot {
                listeners: vec![7],
                worker: Some(0),
                backoff_ms: 100,
                restart_in_ms: None,
            }],
            workers: vec![SavedWorker {
                id: 0,
                slot: 0,
                generation: 1,
                pid: 4242,
                bus: Some(SavedBus { fd: 8, unread: vec![1, 0], unsent: vec![] }),
                age_ms: 5000,
                state: Lifecycle::Ready,
                version: "0.1.0".into(),
                handoff_version: 1,
                heartbeat_age_ms: 300,
                took_over: false,
                counters: WorkerCounters::default(),
            }],
            next_worker: 1,
            generation: 1,
            hub: SavedHub {
                seq: 3,
                next_session: 2,
                next_guest: 2,
                members: vec![SavedMember {
                    session: SessionId(1),
                    nick: "alice".into(),
                    ip: "127.0.0.1".parse().unwrap(),
                    addr: "127.0.0.1:5000".into(),
                    worker: 0,
                    age_ms: 4000,
                }],
                events: vec![SavedEvent { seq: 3, age_ms: 10, skip: None, line: "hi".into() }],
                history: vec!["hi".into()],
                counters: RoomCounters::default(),
                bans: Vec::new(),
                bans_changed: false,
            },
            control_fd: 5,
            metrics: SavedMetrics::default(),
            uptime_ms: 6000,
            last_watchdog_ms: 0,
            last_reload: None,
            status_text: "1 workers, 1 clients, generation 1".into(),
            next_inspect: 0,
            cluster: None,
            reload: Some(SavedReload {
                client_fd: Some(9),
                config_text: String::new(),
                started_ms: 20,
                from_release: "0.1.0".into(),
            }),
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let bytes = sample().encode();
        let back = SupervisorState::decode(&bytes).expect("decode");
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn a_newer_or_foreign_state_is_refused_by_its_header() {
        let newer = format!(
            r#"{{"format":"{FORMAT}","version":{},"release":"9.9.9","whatever":1}}"#,
            VERSION + 1
        );
        assert_eq!(
            SupervisorState::decode(newer.as_bytes()).map(|_| ()),
            Err(StateError::Newer { version: VERSION + 1, release: "9.9.9".into() })
        );
        let foreign = r#"{"format":"other","version":1,"release":"x"}"#;
        assert!(matches!(
            SupervisorState::decode(foreign.as_bytes()),
            Err(StateError::NotAState(_))
        ));
        let truncated = format!(r#"{{"format":"{FORMAT}","version":1,"release":"x"}}"#);
        assert!(matches!(
            SupervisorState::decode(truncated.as_bytes()),
            Err(StateError::Malformed(_))
        ));
    }
}
