//! The TOML configuration (docs/configuration.md): what every key means, its default, and what values it accepts.
//!
//! Everything is checked here, at load time, so that a mistake is reported by `chatd serve`,
//! `chatd check-config` or `chatd reload` with `FILE:LINE:COLUMN`, and never surfaces later as a
//! worker failing to bind or a chat line failing to render. Both `serve` and `reload` go through
//! [`Config::load`]; a reload with an invalid file changes nothing (docs/control.md, "Reload").
//!
//! The file is read by walking toml's spanned parse tree rather than through serde derive: that
//! keeps the position of every key and value at hand, so each message points at the right spot
//! and is worded for operators, and it lets [`control_socket_lenient`] pull one key out of a file
//! that is otherwise wrong.

mod cluster;
pub mod duration;
mod error;
mod file;
mod operators;
mod reader;
#[cfg(test)]
mod tests;
mod tls;
#[cfg(test)]
mod value_tests;
mod web;

use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::format::{Item, StrftimeItems};
use toml::de::{DeTable, DeValue};

use crate::protocol::template::Template;
use reader::{Result, Section, quoted};

pub use cluster::Cluster;
pub use error::ConfigError;
pub use file::{MAX_BYTES, read as read_file};
pub use operators::{DEFAULT_RESERVED_NICKS, Log, Moderation};
pub use tls::Tls;
pub use web::Web;

/// Where `chatd serve` and the control commands look when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/chatd/chatd.toml";

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub server: Server,
    pub socket: Socket,
    pub chat: Chat,
    pub reload: Reload,
    pub metrics: Metrics,
    pub tls: Tls,
    pub web: Web,
    pub log: Log,
    pub moderation: Moderation,
    pub cluster: Cluster,
}

/// `[server]`: processes, listeners and room-wide connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Name of this chat server; non-empty, no control characters.
    pub name: String,
    /// Every worker listens on each of these; never empty, no duplicates.
    pub listen: Vec<SocketAddr>,
    /// Number of worker processes; `"auto"` in the file is resolved here to the CPU count.
    pub workers: usize,
    /// `listen(2)` backlog of each listener.
    pub backlog: u32,
    /// Connections allowed on all workers together.
    pub max_clients: usize,
    /// Connections allowed from one IP address on all workers together; 0 = no limit.
    pub max_clients_per_ip: usize,
    /// Unix socket of `chatd reload|status|stop`.
    pub control_socket: PathBuf,
    /// A worker silent for this long is killed and replaced; always longer than the 1 s beat.
    pub heartbeat_timeout: Duration,
}

/// `[socket]`: options set on every client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// `TCP_NODELAY`: chat lines are small and should leave at once.
    pub nodelay: bool,
    /// Idle time before TCP keepalive probes start; `None` = keepalive off. Whole seconds.
    pub keepalive: Option<Duration>,
    /// `SO_RCVBUF` in bytes; 0 = kernel default.
    pub recv_buffer: usize,
    /// `SO_SNDBUF` in bytes; 0 = kernel default.
    pub send_buffer: usize,
}

/// `[chat]`: what the room looks like and the per-client limits of docs/protocol.md, "Limits and bad input".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    /// Send a client's own messages back to it, in their place in the room order.
    pub echo: bool,
    /// Longest accepted input line, without its CR/LF.
    pub max_line_bytes: usize,
    /// Room lines kept for `/history`.
    pub history: usize,
    /// Room lines sent to a client when it joins; at most `history`.
    pub history_on_join: usize,
    /// How a chat line is rendered.
    pub message_format: Template,
    /// chrono `strftime` format of `{time}`; known to be valid, so formatting cannot panic.
    pub time_format: String,
    /// Per-client input rate; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Unsent output a client may accumulate before it is disconnected as too slow.
    pub max_backlog_bytes: usize,
    /// Disconnect a client after this long without a complete line; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Which room lines `/history` and `history_on_join` keep.
    pub history_events: HistoryEvents,
    /// Nicks `/nick` refuses, lower-case: they are matched case-insensitively.
    pub reserved_nicks: Vec<String>,
}

/// `chat.history_events`: by default history keeps what people said (chat and `/me`), so
/// port probes and reconnects do not push the conversation out; `"all"` keeps every room line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryEvents {
    #[default]
    Chat,
    All,
}

/// A token bucket: `messages` lines per `per` sustained, bursts of up to `burst` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub messages: u32,
    pub per: Duration,
    /// When the file leaves it out: twice `messages`, the ratio of the default.
    pub burst: u32,
}

/// `[reload]`: how a rolling reload treats live sessions (docs/control.md, "Reload").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Hand live sessions to the new worker; `false` drains the old worker instead.
    pub handoff: bool,
    /// How long a draining worker keeps serving before it closes its clients.
    pub drain_timeout: Duration,
}

/// `[metrics]`: the Prometheus endpoint (docs/operations.md, "Metrics").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Where the supervisor serves `GET /metrics`; `None` = no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

impl Default for Server {
    fn default() -> Server {
        Server {
            name: "chatd".to_owned(),
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 9999))],
            workers: auto_workers(),
            backlog: 1024,
            max_clients: 100_000,
            max_clients_per_ip: 0,
            control_socket: PathBuf::from("/run/chatd/control.sock"),
            heartbeat_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for Socket {
    fn default() -> Socket {
        Socket {
            nodelay: true,
            keepalive: Some(Duration::from_secs(60)),
            recv_buffer: 0,
            send_buffer: 0,
        }
    }
}

impl Default for Chat {
    fn default() -> Chat {
        Chat {
            echo: true,
            max_line_bytes: 1024,
            history: 1000,
            history_on_join: 10,
            message_format: Template::parse(DEFAULT_MESSAGE_FORMAT)
                .expect("the default message_format is valid"),
            time_format: "%H:%M:%S".to_owned(),
            rate_limit: Some(RateLimit::default()),
            max_backlog_bytes: 1024 * 1024,
            idle_timeout: None,
            history_events: HistoryEvents::Chat,
            reserved_nicks: DEFAULT_RESERVED_NICKS.iter().map(|n| (*n).to_owned()).collect(),
        }
    }
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit { messages: 20, per: Duration::from_secs(1), burst: 40 }
    }
}

impl Default for Reload {
    fn default() -> Reload {
        Reload { handoff: true, drain_timeout: Duration::from_secs(30) }
    }
}

const DEFAULT_MESSAGE_FORMAT: &str = "{time} <{nick}> {text}";

// Upper bounds. Each keeps a later conversion or allocation safe (C `int` socket options,
// per-client buffers, fork counts) while staying far above any real deployment.
const MAX_WORKERS: usize = 1024;
const MAX_C_INT: u32 = i32::MAX as u32;
const MAX_CLIENTS: usize = 10_000_000;
const MAX_LINE_BYTES: usize = 1024 * 1024;
const MAX_HISTORY: usize = 1_000_000;
const MAX_BACKLOG_BYTES: usize = 1024 * 1024 * 1024;
/// `sun_path` holds 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

impl Config {
    /// Parse and validate config text; `origin` is the file name used in error messages.
    pub fn parse(text: &str, origin: &str) -> std::result::Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| ConfigError::syntax(origin, text, &e))?;
        read_config(&doc).map_err(|e| ConfigError::invalid(origin, text, e))
    }

    /// Read the file (see [`read_file`]) and parse it.
    pub fn load(path: &Path) -> std::result::Result<Config, ConfigError> {
        Config::parse(&read_file(path)?, &path.display().to_string())
    }
}

/// `server.control_socket` from the file at `path`, for `chatd reload|status|stop`.
///
/// These commands only need to find the server; judging the file is the server's job, and it
/// reports an invalid file through `chatd reload` (docs/operations.md). So this ignores invalid
/// values and unknown keys, and gives `None` when the file has no such string. What it cannot
/// ignore is a file that is not TOML at all (or cannot be read): there is no telling what the
/// key would be, and guessing the default could reach another server.
pub fn control_socket_lenient(path: &Path) -> std::result::Result<Option<PathBuf>, ConfigError> {
    let text = read_file(path)?;
    control_socket_from_text(&text, &path.display().to_string())
}

fn control_socket_from_text(
    text: &str,
    origin: &str,
) -> std::result::Result<Option<PathBuf>, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| ConfigError::syntax(origin, text, &e))?;
    let socket = match doc.get_ref().get("server").map(|server| server.get_ref()) {
        Some(DeValue::Table(server)) => match server.get("control_socket").map(|v| v.get_ref()) {
            Some(DeValue::String(socket)) if !socket.is_empty() => {
                Some(PathBuf::from(socket.as_ref()))
            }
            _ => None,
        },
        _ => None,
    };
    Ok(socket)
}

/// The CPU count, which is what `workers = "auto"` means; 1 if it cannot be determined.
fn auto_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn read_config(doc: &toml::Spanned<DeTable<'_>>) -> Result<Config> {
    let root = Section::root(
        doc,
        &[
            "server",
            "socket",
            "chat",
            "reload",
            "metrics",
            "tls",
            "web",
            "log",
            "moderation",
            "cluster",
        ],
    )?;
    let server = read_server(&root)?;
    let metrics = read_metrics(&root, &server)?;
    let tls = tls::read_tls(&root, &server, &metrics)?;
    let web = web::read_web(&root, &server, &tls, &metrics)?;
    let chat = read_chat(&root)?;
    Ok(Config {
        socket: read_socket(&root)?,
        cluster: cluster::read_cluster(&root, chat.max_line_bytes)?,
        chat,
        reload: read_reload(&root)?,
        tls,
        web,
        metrics,
        log: operators::read_log(&root)?,
        moderation: operators::read_moderation(&root)?,
        server,
    })
}

fn read_server(root: &Section<'_>) -> Result<Server> {
    let s = root.table(
        "server",
        &[
            "name",
            "listen",
            "workers",
            "backlog",
            "max_clients",
            "max_clients_per_ip",
            "control_socket",
            "heartbeat_timeout",
        ],
    )?;
    let d = Server::default();
    Ok(Server {
        name: s.parsed("name", d.name, |v| {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err("expected a non-empty name without control characters".to_owned());
            }
            Ok(v.to_owned())
        })?,
        listen: read_listen(&s, d.listen)?,
        workers: read_workers(&s, d.workers)?,
        backlog: s.int("backlog", d.backlog, 1..=MAX_C_INT)?,
        max_clients: s.int("max_clients", d.max_clients, 1..=MAX_CLIENTS)?,
        max_clients_per_ip: s.int("max_clients_per_ip", d.max_clients_per_ip, 0..=MAX_CLIENTS)?,
        control_socket: s.parsed("control_socket", d.control_socket, parse_control_socket)?,
        heartbeat_timeout: s.duration("heartbeat_timeout", d.heartbeat_timeout, |v| {
            let timeout = duration::parse(v)?;
            if timeout <= Duration::from_secs(1) {
                return Err(format!(
                    "must be longer than 1s (workers heartbeat every second), found {}",
                    quoted(v)
                ));
            }
            Ok(timeout)
        })?,
    })
}

/// A path the supervisor can bind. Whatever already exists there must be a socket: the server
/// replaces a stale socket, and nothing else may be mistaken for one and deleted.
fn parse_control_socket(v: &str) -> std::result::Result<PathBuf, String> {
    if v.is_empty() || v.contains('\0') || v.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "expected a Unix socket path of 1 to {MAX_SOCKET_PATH} bytes, found {}",
            quoted(v)
        ));
    }
    let path = PathBuf::from(v);
    // Only what exists matters; a path that cannot be looked at is left to the bind to report.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is {}, not a socket; chatd will not replace it",
                quoted(v),
                file::describe(meta.file_type())
            ));
        }
    }
    Ok(path)
}

fn read_listen(s: &Section<'_>, default: Vec<SocketAddr>) -> Result<Vec<SocketAddr>> {
    const EXPECTED: &str = r#"an array of addresses like ["0.0.0.0:9999", "[::]:9999"]"#;
    let Some(value) = s.get("listen") else { return Ok(default) };
    let DeValue::Array(items) = value.get_ref() else {
        return Err(s.expected("listen", value, EXPECTED));
    };
    if items.is_empty() {
        return Err(s.invalid(
            "listen",
            value.span(),
            r#"must list at least one address, like ["0.0.0.0:9999"]"#,
        ));
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let addr = match item.get_ref() {
            DeValue::String(text) => text.parse().ok(),
            _ => None,
        };
        let Some(addr) = addr else {
            // Host names are refused rather than resolved: a name can map to several addresses
            // or change between reloads, and workers must all bind the same ones.
            return Err(s.expected(
                "listen",
                item,
                r#"IP:PORT like "0.0.0.0:9999" or "[::]:9999""#,
            ));
        };
        if addrs.contains(&addr) {
            return Err(s.invalid("listen", item.span(), format!("{addr} is listed twice")));
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

fn read_workers(s: &Section<'_>, default: usize) -> Result<usize> {
    let Some(value) = s.get("workers") else { return Ok(default) };
    let workers = match value.get_ref() {
        DeValue::String(text) if text == "auto" => Some(auto_workers()),
        other => reader::integer(other).filter(|n| (1..=MAX_WORKERS).contains(n)),
    };
    workers.ok_or_else(|| {
        let what = format!(r#"an integer from 1 to {MAX_WORKERS} or "auto""#);
        s.expected("workers", value, &what)
    })
}

fn read_socket(root: &Section<'_>) -> Result<Socket> {
    let s = root.table("socket", &["nodelay", "keepalive", "recv_buffer", "send_buffer"])?;
    let d = Socket::default();
    Ok(Socket {
        nodelay: s.bool("nodelay", d.nodelay)?,
        keepalive: s.duration("keepalive", d.keepalive, |v| {
            // The kernel takes the keepalive idle time in whole seconds.
            let idle = duration::parse(v)?;
            if idle.subsec_nanos() != 0 {
                return Err(format!(
                    r#"expected whole seconds like "60s" or "0s" (off), found {}"#,
                    quoted(v)
                ));
            }
            Ok(Some(idle).filter(|idle| !idle.is_zero()))
        })?,
        recv_buffer: s.int("recv_buffer", d.recv_buffer, 0..=MAX_C_INT as usize)?,
        send_buffer: s.int("send_buffer", d.send_buffer, 0..=MAX_C_INT as usize)?,
    })
}

fn read_chat(root: &Section<'_>) -> Result<Chat> {
    let s = root.table(
        "chat",
        &[
            "echo",
            "max_line_bytes",
            "history",
            "history_on_join",
            "message_format",
            "time_format",
            "rate_limit",
            "max_backlog_bytes",
            "idle_timeout",
            "history_events",
            "reserved_nicks",
        ],
    )?;
    let d = Chat::default();
    let chat = Chat {
        echo: s.bool("echo", d.echo)?,
        max_line_bytes: s.int("max_line_bytes", d.max_line_bytes, 1..=MAX_LINE_BYTES)?,
        history: s.int("history", d.history, 0..=MAX_HISTORY)?,
        history_on_join: s.int("history_on_join", d.history_on_join, 0..=MAX_HISTORY)?,
        message_format: s.parsed("message_format", d.message_format, |v| {
            refuse_control_characters(v)?;
            Template::parse(v)
        })?,
        time_format: s.parsed("time_format", d.time_format, parse_time_format)?,
        rate_limit: read_rate_limit(&s)?,
        max_backlog_bytes: s.int(
            "max_backlog_bytes",
            d.max_backlog_bytes,
            1024..=MAX_BACKLOG_BYTES,
        )?,
        idle_timeout: s.duration("idle_timeout", d.idle_timeout, |v| {
            Ok(Some(duration::parse(v)?).filter(|idle| !idle.is_zero()))
        })?,
        history_events: s.parsed("history_events", d.history_events, |v| match v {
            "chat" => Ok(HistoryEvents::Chat),
            "all" => Ok(HistoryEvents::All),
            _ => Err(format!(r#"expected "chat" or "all", found "{v}""#)),
        })?,
        reserved_nicks: operators::read_reserved_nicks(&s)?,
    };
    // Cross-key checks point at whichever of the two keys the file sets.
    if chat.history_on_join > chat.history {
        return Err(s.invalid(
            "history_on_join",
            s.span_of(&["history_on_join", "history"]),
            format!("{} is more than chat.history ({})", chat.history_on_join, chat.history),
        ));
    }
    if chat.max_backlog_bytes < chat.max_line_bytes {
        return Err(s.invalid(
            "max_backlog_bytes",
            s.span_of(&["max_backlog_bytes", "max_line_bytes"]),
            format!(
                "{} is less than chat.max_line_bytes ({}): one line must fit",
                chat.max_backlog_bytes, chat.max_line_bytes
            ),
        ));
    }
    Ok(chat)
}

/// The formats reach every client as they are, so a control character in them (a terminal
/// escape, a line break) would reach every terminal raw. A tab is harmless and allowed.
fn refuse_control_characters(format: &str) -> std::result::Result<(), String> {
    match format.chars().find(|&c| is_forbidden_control(c)) {
        Some(c) => Err(format!(
            "must not contain control characters (found U+{:04X}): they would be sent to every \
             client as they are",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// C0 but tab, DEL and C1.
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// chrono panics when it displays a format with an invalid item, so such a format is refused here.
fn parse_time_format(format: &str) -> std::result::Result<String, String> {
    refuse_control_characters(format)?;
    let mut items = StrftimeItems::new(format);
    if items.clone().any(|item| matches!(item, Item::Error)) {
        return Err(format!(
            r#"expected a strftime format like "%H:%M:%S" ("%%" for a literal %), found {}"#,
            quoted(format)
        ));
    }
    // "%n" is how strftime writes a newline.
    let breaks_lines = items.any(|item| match item {
        Item::Literal(text) | Item::Space(text) => text.chars().any(is_forbidden_control),
        Item::OwnedLiteral(text) | Item::OwnedSpace(text) => text.chars().any(is_forbidden_control),
        _ => false,
    });
    if breaks_lines {
        return Err(r#"must not contain "%n": it would break every chat line in two"#.to_owned());
    }
    Ok(format.to_owned())
}

fn read_rate_limit(chat: &Section<'_>) -> Result<Option<RateLimit>> {
    let s = chat.table("rate_limit", &["messages", "per", "burst"])?;
    let d = RateLimit::default();
    let messages = s.int("messages", d.messages, 0..=u32::MAX)?;
    let per = s.duration("per", d.per, |v| {
        let per = duration::parse(v)?;
        if per.is_zero() {
            return Err(format!(
                r#"expected a duration longer than 0 like "1s", found {}"#,
                quoted(v)
            ));
        }
        Ok(per)
    })?;
    let burst = s.int("burst", messages.saturating_mul(2), 1..=u32::MAX)?;
    Ok((messages > 0).then_some(RateLimit { messages, per, burst }))
}

fn read_reload(root: &Section<'_>) -> Result<Reload> {
    let s = root.table("reload", &["handoff", "drain_timeout"])?;
    let d = Reload::default();
    Ok(Reload {
        handoff: s.bool("handoff", d.handoff)?,
        drain_timeout: s.duration("drain_timeout", d.drain_timeout, duration::parse)?,
    })
}

fn read_metrics(root: &Section<'_>, server: &Server) -> Result<Metrics> {
    let s = root.table("metrics", &["listen"])?;
    let listen: Option<SocketAddr> = s.parsed("listen", None, |v| {
        if v.is_empty() {
            return Ok(None);
        }
        // Host names are refused as in `server.listen`.
        v.parse().map(Some).map_err(|_| {
            format!(
                r#"expected IP:PORT like "127.0.0.1:9101", or "" for none, found {}"#,
                quoted(v)
            )
        })
    })?;
    if let Some(addr) = listen.filter(|addr| addr.port() != 0) {
        if server.listen.contains(&addr) {
            return Err(s.invalid(
                "listen",
                s.span_of(&["listen"]),
                format!(
                    "{addr} is also in server.listen: the metrics need an address of their own"
                ),
            ));
        }
    }
    Ok(Metrics { listen })
}
