use std::io::Write;

use proptest::prelude::*;

use super::*;

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/chatd.toml");

pub(super) fn parse(text: &str) -> Config {
    match Config::parse(text, "t.toml") {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

pub(super) fn error(text: &str) -> String {
    Config::parse(text, "t.toml").expect_err("the config should be rejected").to_string()
}

/// Asserts the error starts with `t.toml:POSITION: ` and mentions every one of `parts`.
#[track_caller]
pub(super) fn assert_error(text: &str, position: &str, parts: &[&str]) {
    let message = error(text);
    assert!(message.starts_with(&format!("t.toml:{position}: ")), "{message}");
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

/// Whether `message` starts with `t.toml:LINE:COLUMN: `.
fn has_position(message: &str) -> bool {
    let mut parts = message.splitn(4, ':');
    parts.next() == Some("t.toml")
        && parts.next().is_some_and(|line| line.parse::<usize>().is_ok())
        && parts.next().is_some_and(|column| column.parse::<usize>().is_ok())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse(""), Config::default());
    assert_eq!(parse("[server]\n[socket]\n[chat]\n[reload]\n[metrics]\n"), Config::default());
}

#[test]
fn documented_defaults() {
    let c = Config::default();
    assert_eq!(c.server.name, "chatd");
    assert_eq!(c.server.listen, ["0.0.0.0:9999".parse::<SocketAddr>().unwrap()]);
    assert_eq!(c.server.workers, auto_workers());
    assert!(c.server.workers >= 1);
    assert_eq!(c.server.backlog, 1024);
    assert_eq!(c.server.max_clients, 100_000);
    assert_eq!(c.server.max_clients_per_ip, 0);
    assert_eq!(c.server.control_socket, Path::new("/run/chatd/control.sock"));
    assert_eq!(c.server.heartbeat_timeout, secs(5));
    assert_eq!(
        c.socket,
        Socket { nodelay: true, keepalive: Some(secs(60)), recv_buffer: 0, send_buffer: 0 }
    );
    assert!(c.chat.echo);
    assert_eq!(c.chat.max_line_bytes, 1024);
    assert_eq!(c.chat.history, 1000);
    assert_eq!(c.chat.history_on_join, 10);
    assert_eq!(c.chat.message_format, Template::parse("{time} <{nick}> {text}").unwrap());
    assert_eq!(c.chat.time_format, "%H:%M:%S");
    assert_eq!(c.chat.rate_limit, Some(RateLimit { messages: 20, per: secs(1), burst: 40 }));
    assert_eq!(c.chat.max_backlog_bytes, 1_048_576);
    assert_eq!(c.chat.idle_timeout, None);
    assert_eq!(c.reload, Reload { handoff: true, drain_timeout: secs(30) });
}

#[test]
fn shipped_config_is_the_defaults_but_listen_and_the_control_socket() {
    let mut shipped = Config::load(Path::new(SHIPPED)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shipped.server.control_socket, Path::new("/tmp/chatd.sock"));
    assert_eq!(shipped.server.listen, ["127.0.0.1:9999".parse::<SocketAddr>().unwrap()]);
    assert_eq!(shipped.server.workers, auto_workers());
    shipped.server.control_socket = Server::default().control_socket;
    shipped.server.listen = Server::default().listen;
    assert_eq!(shipped, Config::default());
}

#[test]
fn shipped_config_documents_every_key() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let doc = DeTable::parse(&text).unwrap();
    let root = doc.get_ref();
    let keys = |table: &str| -> Vec<String> {
        let DeValue::Table(t) = root.get(table).unwrap().get_ref() else { panic!("[{table}]") };
        t.iter().map(|(k, _)| k.get_ref().to_string()).collect()
    };
    assert_eq!(keys("server").len(), 8);
    assert_eq!(keys("socket").len(), 4);
    assert_eq!(keys("chat").len(), 11);
    assert_eq!(keys("reload").len(), 2);
    assert_eq!(keys("metrics").len(), 1);
    assert_eq!(keys("tls").len(), 4);
    assert_eq!(keys("log").len(), 1);
    assert_eq!(keys("moderation").len(), 1);
    assert_eq!(keys("cluster").len(), 8);
}

#[test]
fn every_key() {
    let c = parse(
        r#"
[server]
name = "lobby"
listen = ["127.0.0.1:0", "[::1]:9999"]
workers = 3
backlog = 16
max_clients = 500
max_clients_per_ip = 4
control_socket = "/tmp/x.sock"
heartbeat_timeout = "2s"

[socket]
nodelay = false
keepalive = "2m"
recv_buffer = 65536
send_buffer = 0x10000

[chat]
echo = false
max_line_bytes = 2_048
history = 50
history_on_join = 50
message_format = "{time} From {addr}. msg={text}"
time_format = "%Y-%m-%d %H:%M"
rate_limit = { messages = 5, per = "10s", burst = 7 }
max_backlog_bytes = 4096
idle_timeout = "1m30s"
history_events = "all"

[reload]
handoff = false
drain_timeout = "500ms"

[metrics]
listen = "[::1]:9101"
"#,
    );
    let s = &c.server;
    assert_eq!(s.name, "lobby");
    let listen: Vec<SocketAddr> =
        vec!["127.0.0.1:0".parse().unwrap(), "[::1]:9999".parse().unwrap()];
    assert_eq!(s.listen, listen);
    assert!(s.listen[1].is_ipv6());
    assert_eq!((s.workers, s.backlog, s.max_clients, s.max_clients_per_ip), (3, 16, 500, 4));
    assert_eq!(s.control_socket, Path::new("/tmp/x.sock"));
    assert_eq!(s.heartbeat_timeout, secs(2));
    assert_eq!(
        c.socket,
        Socket {
            nodelay: false,
            keepalive: Some(secs(120)),
            recv_buffer: 65536,
            send_buffer: 65536
        }
    );
    let chat = &c.chat;
    assert!(!chat.echo);
    assert_eq!((chat.max_line_bytes, chat.history, chat.history_on_join), (2048, 50, 50));
    assert_eq!(chat.message_format, Template::parse("{time} From {addr}. msg={text}").unwrap());
    assert_eq!(chat.time_format, "%Y-%m-%d %H:%M");
    assert_eq!(chat.rate_limit, Some(RateLimit { messages: 5, per: secs(10), burst: 7 }));
    assert_eq!(chat.max_backlog_bytes, 4096);
    assert_eq!(chat.idle_timeout, Some(secs(90)));
    assert_eq!(chat.history_events, HistoryEvents::All);
    assert_eq!(c.reload, Reload { handoff: false, drain_timeout: Duration::from_millis(500) });
    assert_eq!(c.metrics.listen, Some("[::1]:9101".parse().unwrap()));
}

#[test]
fn tables_in_other_toml_spellings() {
    let c = parse("server.workers = 2\n[chat.rate_limit]\nmessages = 1\nper = \"2s\"\n");
    assert_eq!(c.server.workers, 2);
    assert_eq!(c.chat.rate_limit, Some(RateLimit { messages: 1, per: secs(2), burst: 2 }));
}

#[test]
fn unknown_keys() {
    assert_error(
        "bogus = 1\n",
        "1:1",
        &["unknown key 'bogus'", "[server], [socket], [chat], [reload]"],
    );
    assert_error("[server]\n\n[bogus]\nx = 1\n", "3:2", &["unknown table 'bogus'"]);
    assert_error(
        "[server]\nname = \"x\"\n  wrokers = 4\n",
        "3:3",
        &["unknown key 'wrokers' in [server] (expected one of: name, listen, workers, backlog,"],
    );
    assert_error("server.wrokers = 4\n", "1:8", &["unknown key 'wrokers' in [server]"]);
    assert_error(
        "[chat]\nrate_limit = { messages = 1, pre = \"1s\" }\n",
        "2:30",
        &["unknown key 'pre' in chat.rate_limit (expected one of: messages, per, burst)"],
    );
    // The first one in the file is reported, whatever the key order of the parsed table.
    assert_error("[socket]\nzzz = 1\naaa = 2\n", "2:1", &["'zzz' in [socket]"]);
}

#[test]
fn broken_toml() {
    assert_error("[server]\nname = \"chatd\"\nworkers = \n", "3:11", &["invalid TOML: "]);
    assert_error(
        "[server]\nname = \"a\"\nname = \"b\"\n",
        "3:1",
        &["invalid TOML: ", "duplicate key"],
    );
    assert_error("[chat\n", "1:6", &["invalid TOML: "]);
    assert!(error("[server]\nname = \"unterminated\n").starts_with("t.toml:2:"));
}

#[test]
fn wrong_types() {
    assert_error("server = 5\n", "1:10", &["server: expected a table, found 5"]);
    assert_error("[[server]]\n", "1:1", &["server: expected a table, found an array"]);
    assert_error(
        "[socket]\nnodelay = \"yes\"\n",
        "2:11",
        &["socket.nodelay: expected true or false, found \"yes\""],
    );
    assert_error(
        "[server]\nbacklog = -1\n",
        "2:11",
        &["server.backlog: expected an integer from 1 to 2147483647, found -1"],
    );
    assert_error(
        "[chat]\nhistory = 1.5\n",
        "2:11",
        &["chat.history: expected an integer", "found 1.5"],
    );
    assert_error("[server]\nname = 7\n", "2:8", &["server.name: expected a string, found 7"]);
    assert_error(
        "[reload]\ndrain_timeout = true\n",
        "2:17",
        &[r#"reload.drain_timeout: expected a duration like "500ms""#, "found true"],
    );
}

#[test]
fn workers() {
    assert_eq!(parse("[server]\nworkers = \"auto\"\n").server.workers, auto_workers());
    assert_eq!(parse("[server]\nworkers = 1\n").server.workers, 1);
    assert_eq!(parse("[server]\nworkers = 1024\n").server.workers, 1024);
    let expected = r#"server.workers: expected an integer from 1 to 1024 or "auto""#;
    assert_error("[server]\nworkers = 0\n", "2:11", &[expected, "found 0"]);
    assert_error("[server]\nworkers = \"lots\"\n", "2:11", &[expected, "found \"lots\""]);
    assert_error("[server]\nworkers = 1025\n", "2:11", &[expected]);
    assert_error("[server]\nworkers = -2\n", "2:11", &[expected]);
    assert_error("[server]\nworkers = \"Auto\"\n", "2:11", &[expected]);
}

#[test]
fn listen() {
    let c = parse("[server]\nlisten = [\"[::]:9999\", \"0.0.0.0:9999\", \"[::1]:0\"]\n");
    assert_eq!(c.server.listen.len(), 3);
    assert_eq!(c.server.listen[0], SocketAddr::from(([0u16; 8], 9999)));
    let expected = r#"expected IP:PORT like "0.0.0.0:9999" or "[::]:9999""#;
    assert_error(
        "[server]\nlisten = [\"nope\"]\n",
        "2:11",
        &["server.listen: ", expected, "found \"nope\""],
    );
    assert_error("[server]\nlisten = [\"1.2.3.4:1\", \"localhost:80\"]\n", "2:24", &[expected]);
    assert_error("[server]\nlisten = [\"::1:9999\"]\n", "2:11", &[expected]);
    assert_error("[server]\nlisten = [9999]\n", "2:11", &[expected, "found 9999"]);
    assert_error(
        "[server]\nlisten = []\n",
        "2:10",
        &["server.listen: must list at least one address"],
    );
    assert_error(
        "[server]\nlisten = \"0.0.0.0:9999\"\n",
        "2:10",
        &["expected an array of addresses"],
    );
    assert_error(
        "[server]\nlisten = [\"[::1]:80\", \"[0:0::1]:80\"]\n",
        "2:23",
        &["server.listen: [::1]:80 is listed twice"],
    );
}

#[test]
fn durations() {
    assert_eq!(parse("[chat]\nidle_timeout = \"1m30s\"\n").chat.idle_timeout, Some(secs(90)));
    assert_eq!(parse("[chat]\nidle_timeout = \"0s\"\n").chat.idle_timeout, None);
    assert_eq!(parse("[socket]\nkeepalive = \"0s\"\n").socket.keepalive, None);
    assert_eq!(parse("[socket]\nkeepalive = \"1h\"\n").socket.keepalive, Some(secs(3600)));
    assert_eq!(parse("[reload]\ndrain_timeout = \"0s\"\n").reload.drain_timeout, Duration::ZERO);
    assert_eq!(
        parse("[server]\nheartbeat_timeout = \"1001ms\"\n").server.heartbeat_timeout,
        Duration::from_millis(1001)
    );
    assert_error(
        "[socket]\nkeepalive = \"5 parsecs\"\n",
        "2:13",
        &[r#"socket.keepalive: expected a duration like "500ms", "5s""#, "found \"5 parsecs\""],
    );
    assert_error(
        "[socket]\nkeepalive = \"1500ms\"\n",
        "2:13",
        &["socket.keepalive: expected whole seconds"],
    );
    assert_error(
        "[server]\nheartbeat_timeout = \"1s\"\n",
        "2:21",
        &["server.heartbeat_timeout: must be longer than 1s"],
    );
    assert_error(
        "[chat]\nidle_timeout = \"400d\"\n",
        "2:16",
        &["chat.idle_timeout: \"400d\" is too long: at most 365d"],
    );
}

#[test]
fn rate_limit() {
    assert_eq!(parse("[chat]\nrate_limit = { messages = 0 }\n").chat.rate_limit, None);
    // messages = 0 switches the limit off, but the other keys must still make sense.
    assert_error(
        "[chat]\nrate_limit = { messages = 0, per = \"soon\" }\n",
        "2:36",
        &["chat.rate_limit.per: "],
    );
    let limit = parse("[chat]\nrate_limit = { messages = 5 }\n").chat.rate_limit;
    assert_eq!(limit, Some(RateLimit { messages: 5, per: secs(1), burst: 10 }));
    let limit = parse("[chat]\nrate_limit = { per = \"1m\", burst = 1 }\n").chat.rate_limit;
    assert_eq!(limit, Some(RateLimit { messages: 20, per: secs(60), burst: 1 }));
    assert_error(
        "[chat]\nrate_limit = { burst = 0 }\n",
        "2:24",
        &["chat.rate_limit.burst: expected an integer from 1 to"],
    );
    assert_error(
        "[chat]\nrate_limit = { per = \"0s\" }\n",
        "2:22",
        &["chat.rate_limit.per: expected a duration longer than 0"],
    );
    assert_error(
        "[chat]\nrate_limit = 20\n",
        "2:14",
        &["chat.rate_limit: expected a table, found 20"],
    );
}

#[test]
fn chat_values() {
    assert_error(
        "[chat]\nmessage_format = \"{time} {bogus}\"\n",
        "2:18",
        &["chat.message_format: unknown placeholder '{bogus}'"],
    );
    assert_error(
        "[chat]\nmessage_format = \"<{nick}>\"\n",
        "2:18",
        &["chat.message_format: ", "{text}"],
    );
    assert_error(
        "[chat]\ntime_format = \"%H:%Q\"\n",
        "2:15",
        &["chat.time_format: expected a strftime format", "found \"%H:%Q\""],
    );
    assert_error("[chat]\ntime_format = \"100%\"\n", "2:15", &["chat.time_format: "]);
    assert_eq!(parse("[chat]\ntime_format = \"100%%\"\n").chat.time_format, "100%%");
    assert_error(
        "[chat]\nmax_line_bytes = 0\n",
        "2:18",
        &["chat.max_line_bytes: expected an integer from 1 to 1048576"],
    );
    assert_error("[chat]\nmax_line_bytes = 1048577\n", "2:18", &["from 1 to 1048576"]);
    assert_error("[chat]\nmax_backlog_bytes = 1023\n", "2:21", &["from 1024 to"]);
}

#[test]
fn cross_key_checks_point_at_the_key_in_the_file() {
    assert_error(
        "[chat]\nhistory = 5\nhistory_on_join = 6\n",
        "3:19",
        &["chat.history_on_join: 6 is more than chat.history (5)"],
    );
    // history_on_join keeps its default of 10, so the only key to point at is history.
    assert_error(
        "[chat]\nhistory = 5\n",
        "2:11",
        &["chat.history_on_join: 10 is more than chat.history (5)"],
    );
    assert_eq!(parse("[chat]\nhistory = 0\nhistory_on_join = 0\n").chat.history, 0);
    assert_error(
        "[chat]\nmax_line_bytes = 4096\nmax_backlog_bytes = 2048\n",
        "3:21",
        &["chat.max_backlog_bytes: 2048 is less than chat.max_line_bytes (4096)"],
    );
}

#[test]
fn server_values() {
    assert_error("[server]\nname = \"\"\n", "2:8", &["server.name: expected a non-empty name"]);
    assert_error("[server]\nname = \"a\\u001bb\"\n", "2:8", &["server.name: "]);
    let long = format!("[server]\ncontrol_socket = \"/{}\"\n", "x".repeat(107));
    assert_error(
        &long,
        "2:18",
        &["server.control_socket: expected a Unix socket path of 1 to 107 bytes"],
    );
    assert_error(
        "[server]\nmax_clients = 0\n",
        "2:15",
        &["server.max_clients: expected an integer from 1 to"],
    );
}

#[test]
fn load_reports_the_path() {
    let missing = "/nonexistent/chatd/chatd.toml";
    let message = Config::load(Path::new(missing)).unwrap_err().to_string();
    assert_eq!(message, format!("{missing}: cannot read: No such file or directory (os error 2)"));

    let file = temp_file("[server]\n\nwrokers = 4\n");
    let message = Config::load(file.path()).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}:3:1: unknown key 'wrokers'", file.path().display())),
        "{message}"
    );
}

#[test]
fn lenient_control_socket() {
    let found = |text: &str| control_socket_lenient(temp_file(text).path()).unwrap();
    let socket = Some(PathBuf::from("/run/x.sock"));
    // Invalid but TOML: the key is still found.
    assert_eq!(found("[server]\ncontrol_socket = \"/run/x.sock\"\nwrokers = 4\n[bogus]\n"), socket);
    assert_eq!(found("[server]\ncontrol_socket = \"/run/x.sock\"\nworkers = 0\n"), socket);
    assert_eq!(found("server.control_socket = \"/run/x.sock\"\n"), socket);
    // No usable key: the caller takes the default.
    assert_eq!(found("[server]\ncontrol_socket = 5\n"), None);
    assert_eq!(found("[server]\ncontrol_socket = \"\"\n"), None);
    assert_eq!(found("[server]\nworkers = 2\n"), None);
    assert_eq!(found("server = 3\n"), None);
    assert_eq!(found(""), None);
}

#[test]
fn lenient_control_socket_reports_a_file_that_is_not_toml() {
    let error = |text: &str| {
        let file = temp_file(text);
        let e = control_socket_lenient(file.path()).expect_err(text);
        assert!(e.is_syntax(), "{e}");
        e.to_string().replacen(&file.path().display().to_string(), "t.toml", 1)
    };
    let broken = [
        ("[server]\ncontrol_socket = \"/run/x.sock\"\n[chat]\nhistory = = 3\n", "4:11"),
        ("[server]\ncontrol_socket = \"/run/x.sock\n", "2:30"),
        ("[server]\ncontrol_socket = /run/x.sock\n", "2:18"),
        ("[server]\ncontrol_socket = \"/run/x.sock\" junk\n", "2:32"),
        ("\u{0}\u{1}garbage ]]] {{ = = \n\u{7f}", "1:11"),
    ];
    for (text, position) in broken {
        let message = error(text);
        assert!(message.starts_with(&format!("t.toml:{position}: invalid TOML: ")), "{message}");
    }
    let missing = control_socket_lenient(Path::new("/nonexistent/chatd.toml")).unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        if let Err(e) = Config::parse(&text, "t.toml") {
            prop_assert!(has_position(&e.to_string()), "{}", e);
        }
        let _ = control_socket_from_text(&text, "t.toml");
    }

    #[test]
    fn damaged_shipped_config_never_panics(
        at in 0usize..4000,
        len in 0usize..8,
        insert in "\\PC{0,3}",
    ) {
        let text = std::fs::read_to_string(SHIPPED).unwrap();
        let mut at = at.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + len).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let damaged = format!("{}{insert}{}", &text[..at], &text[end..]);
        if let Err(e) = Config::parse(&damaged, "t.toml") {
            // Every rejection of this file has a place in it.
            prop_assert!(has_position(&e.to_string()), "{}", e);
        }
        let _ = control_socket_from_text(&damaged, "t.toml");
    }
}

#[test]
fn reserved_nicks_are_lower_cased_and_checked() {
    let c = parse("[chat]\nreserved_nicks = [\"Ops\", \"root\"]\n");
    assert_eq!(c.chat.reserved_nicks, ["ops", "root"]);
    assert!(parse("[chat]\nreserved_nicks = []\n").chat.reserved_nicks.is_empty());
    assert_error("[chat]\nreserved_nicks = [\"a b\"]\n", "2:19", &["chat.reserved_nicks", "'a b'"]);
    assert_error("[chat]\nreserved_nicks = \"admin\"\n", "2:18", &["expected an array"]);
}

#[test]
fn moderation_bans_are_addresses_or_prefixes() {
    let c = parse("[moderation]\nbanned = [\"203.0.113.9/24\", \"::1\"]\n");
    let banned: Vec<String> = c.moderation.banned.iter().map(ToString::to_string).collect();
    assert_eq!(banned, ["203.0.113.0/24", "::1"]);
    assert_error(
        "[moderation]\nbanned = [\"::1\", \"x\"]\n",
        "2:18",
        &["moderation.banned", "'x'"],
    );
    assert_error("[moderation]\nbanned = [1]\n", "2:11", &["expected a string"]);
    assert!(!parse("[log]\nconnections = false\n").log.connections);
}
