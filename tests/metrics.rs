//! End-to-end tests of `/metrics` (docs/operations.md, "Metrics") against the real binary with
//! two workers: every metric and label value exported from the start; the numbers following
//! clients that connect, talk, get rate-limited, are turned away and leave; counters that never
//! go back across a reload, a failed reload and a killed worker; the HTTP responder's answers to
//! wrong, broken and slow requests; `[metrics] listen` applied by a reload; the Grafana dashboard
//! naming only exported metrics (its cluster panels: those of a host in cluster mode, on one
//! NATS node); `chatd --version`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::room::Room;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a `chatd reload` may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
const METRICS_ON: &str = "[metrics]\nlisten = \"127.0.0.1:0\"";

/// Every metric family with its `# TYPE`, and the label values each must always show.
const FAMILIES: &[(&str, &str, &str, &[&str])] = &[
    ("chatd_build_info", "gauge", "version", &[env!("CARGO_PKG_VERSION")]),
    ("chatd_clients", "gauge", "worker", &["0", "1"]),
    ("chatd_clients_total", "gauge", "", &[]),
    ("chatd_connections_total", "counter", "", &[]),
    (
        "chatd_disconnections_total",
        "counter",
        "reason",
        &["quit", "closed", "lost", "too_slow", "idle", "kicked", "banned", "server"],
    ),
    (
        "chatd_room_lines_total",
        "counter",
        "kind",
        &["chat", "me", "join", "leave", "nick", "notice"],
    ),
    ("chatd_deliveries_total", "counter", "", &[]),
    ("chatd_bytes_received_total", "counter", "", &[]),
    ("chatd_bytes_sent_total", "counter", "", &[]),
    ("chatd_rate_limited_total", "counter", "", &[]),
    ("chatd_rejected_total", "counter", "reason", &["full", "per_ip", "banned", "tls"]),
    ("chatd_reloads_total", "counter", "result", &["ok", "failed"]),
    ("chatd_reload_duration_seconds", "histogram", "", &[]),
    ("chatd_worker_restarts_total", "counter", "", &[]),
    ("chatd_generation", "gauge", "", &[]),
    ("chatd_history_lines", "gauge", "", &[]),
];

/// One scrape: the text and its samples by series (`name{labels}`).
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no {series} in:\n{}", self.text))
    }

    /// Sample names (without labels), e.g. `chatd_reload_duration_seconds_bucket`.
    fn names(&self) -> BTreeSet<String> {
        self.samples.keys().map(|s| s.split('{').next().unwrap().to_string()).collect()
    }

    /// Counter samples (and the histogram's, which only grow too).
    fn counters(&self) -> impl Iterator<Item = (&String, &f64)> {
        self.samples.iter().filter(|(s, _)| {
            let name = s.split('{').next().unwrap();
            ["_total", "_bucket", "_count", "_sum"].iter().any(|x| name.ends_with(x))
                && name != "chatd_clients_total"
        })
    }
}

/// Sends `request` and reads the whole answer (the server closes after it).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    stream.write_all(request).expect("send request");
    let mut answer = Vec::new();
    // A reset after the answer (unread bytes of ours) is fine: the answer is what counts.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8(answer).expect("UTF-8 answer")
}

fn scrape(addr: SocketAddr) -> Scrape {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, text) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4"), "{head}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("value in {l:?}")))
        })
        .collect();
    Scrape { text: text.to_string(), samples }
}

/// Scrapes until `ready` holds (the workers report once a second).
fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_until(LINE_TIMEOUT, what, || Some(scrape(addr)).filter(&ready))
}

/// The address the server logged for its metrics (the last one, after reloads).
fn metrics_addr(server: &Server, nth: usize) -> SocketAddr {
    let line = server.wait_for_log_count("serving metrics on http://", nth, START_TIMEOUT);
    let rest = line.split("http://").nth(1).unwrap();
    rest.trim_end_matches("/metrics").parse().unwrap_or_else(|_| panic!("address in {line:?}"))
}

fn start(builder: ServerBuilder) -> (Server, SocketAddr) {
    let server = builder.raw(METRICS_ON).start();
    let addr = metrics_addr(&server, 1);
    (server, addr)
}

/// Every counter of `after` is at least what it was in `before`.
fn assert_never_backwards(before: &Scrape, after: &Scrape, when: &str) {
    let mut compared = 0;
    for (series, was) in before.counters() {
        let now = after.get(series);
        assert!(now >= *was, "{series} went back {when}: {was} -> {now}");
        compared += 1;
    }
    assert!(compared > 30, "only {compared} counters compared");
}

/// A scrape that has every connection the room's clients made: guest numbers count the joins,
/// so the newest guest's number is how many there were, and every connection so far joined.
/// (The snapshot behind a scrape is up to a second old, and the workers report once a second.)
fn scrape_settled(addr: SocketAddr, room: &Room) -> Scrape {
    let joins = room
        .nicks
        .iter()
        .filter_map(|n| n.strip_prefix("guest-")?.parse::<u64>().ok())
        .max()
        .expect("a guest in the room") as f64;
    scrape_until(addr, &format!("{joins} joins and connections"), |s| {
        s.get("chatd_room_lines_total{kind=\"join\"}") == joins
            && s.get("chatd_connections_total") == joins
    })
}

fn reload(server: &Server) -> std::process::Output {
    server.run(&["reload"], CONTROL_TIMEOUT)
}

#[test]
fn every_metric_and_label_value_is_there_from_the_start() {
    let (_server, addr) = start(ServerBuilder::new().workers(2));
    let scrape = scrape(addr);
    for (family, kind, label, values) in FAMILIES {
        let help = format!("# HELP {family} ");
        assert!(scrape.text.lines().any(|l| l.starts_with(&help)), "{help}:\n{}", scrape.text);
        let type_line = format!("# TYPE {family} {kind}");
        assert!(scrape.text.lines().any(|l| l == type_line), "{type_line}:\n{}", scrape.text);
        for value in *values {
            let series = format!("{family}{{{label}=\"{value}\"}}");
            let expected = if *family == "chatd_build_info" { 1.0 } else { 0.0 };
            assert_eq!(scrape.get(&series), expected, "{series}");
        }
    }
    for (series, value) in scrape.counters() {
        assert_eq!(*value, 0.0, "{series} before anything happened");
    }
    assert_eq!(scrape.get("chatd_reload_duration_seconds_bucket{le=\"+Inf\"}"), 0.0);
    assert_eq!(scrape.get("chatd_clients_total"), 0.0);
    assert_eq!(scrape.get("chatd_generation"), 1.0);
    assert_eq!(scrape.get("chatd_history_lines"), 0.0);
}

#[test]
fn metrics_follow_the_room() {
    let (server, addr) = start(
        ServerBuilder::new()
            .workers(2)
            .server_key("max_clients = 4")
            .chat_key("history_on_join = 0")
            .chat_key("rate_limit = { messages = 20, per = \"1s\", burst = 3 }"),
    );
    let mut room = Room::spread(&server, 3);
    let base = scrape_settled(addr, &room);
    let delta = |now: &Scrape, series: &str| now.get(series) - base.get(series);
    let mut sent_bytes = 0;

    // Six lines at once: three go through, the rest wait for the rate limit.
    let texts: Vec<String> = (1..=6).map(|i| format!("burst {i}")).collect();
    room.clients[0]
        .send_raw(texts.iter().map(|t| format!("{t}\n")).collect::<String>().as_bytes())
        .unwrap();
    sent_bytes += texts.iter().map(|t| t.len() + 1).sum::<usize>();
    for text in &texts {
        room.expect_chat_all(0, text);
    }
    room.clients[1].send_line("/me waves");
    sent_bytes += "/me waves\n".len();
    room.expect_timed_all(&format!("* {} waves", room.nicks[1]));
    room.clients[1].send_line("/nick metricfan");
    sent_bytes += "/nick metricfan\n".len();
    room.expect_all(&format!("* {} is now known as metricfan", room.nicks[1]));
    room.nicks[1] = "metricfan".into();
    room.join_one(&server);
    let mut refused = server.connect("refused");
    refused.expect_line("! server full");
    refused.expect_closed();
    let quitter = room.nicks[2].clone();
    room.quit(2);
    sent_bytes += "/quit\n".len();
    let closer = room.nicks.pop().unwrap();
    drop(room.clients.pop());
    room.expect_all(&format!("* {closer} left (connection closed)"));

    // Everything the clients still connected have read came from the server.
    let read_bytes: usize =
        room.clients.iter().flat_map(|c| c.transcript().iter().map(|l| l.len() + 2)).sum();
    let now = scrape_until(addr, "the workers' reports of it all", |s| {
        delta(s, "chatd_connections_total") == 2.0
            && delta(s, "chatd_bytes_received_total") >= sent_bytes as f64
            && s.get("chatd_bytes_sent_total") >= read_bytes as f64
            && delta(s, "chatd_rate_limited_total") >= 1.0
            && delta(s, "chatd_deliveries_total") >= 32.0
    });
    for (kind, n) in [("chat", 6.0), ("me", 1.0), ("nick", 1.0), ("join", 1.0), ("leave", 2.0)] {
        assert_eq!(delta(&now, &format!("chatd_room_lines_total{{kind=\"{kind}\"}}")), n, "{kind}");
    }
    assert_eq!(delta(&now, "chatd_disconnections_total{reason=\"quit\"}"), 1.0, "{quitter}");
    assert_eq!(delta(&now, "chatd_disconnections_total{reason=\"closed\"}"), 1.0, "{closer}");
    assert_eq!(delta(&now, "chatd_rejected_total{reason=\"full\"}"), 1.0);
    assert_eq!(delta(&now, "chatd_history_lines"), 7.0);
    assert!(delta(&now, "chatd_bytes_sent_total") > 0.0);
    assert_eq!(now.get("chatd_clients_total"), 2.0);
    let by_worker = now.get("chatd_clients{worker=\"0\"}") + now.get("chatd_clients{worker=\"1\"}");
    assert_eq!(by_worker, 2.0);
}

#[test]
fn counters_never_go_back_across_reloads_and_a_killed_worker() {
    let builder = ServerBuilder::new()
        .workers(2)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }");
    let (server, addr) = start(builder.clone());
    let mut room = Room::spread(&server, 4);
    room.chat(0, "before the reload");
    let before = scrape_settled(addr, &room);
    // What the clients sent: the replaced ones their `/quit`, then the chat lines.
    let joins = before.get("chatd_connections_total") as usize;
    let mut sent = (joins - 4) * "/quit\n".len() + "before the reload\n".len();
    // Lines read by the first generation just before it goes: its workers exit within a
    // second of them, so they reach the totals only with the workers' last report.
    for i in 0..4 {
        let text = format!("last words from {i}");
        sent += text.len() + 1;
        room.chat(i, &text);
    }
    let out = reload(&server);
    assert!(out.status.success(), "reload: {}", output_text(&out));
    // Every session moved: the first generation's workers are gone, their counts kept.
    server.wait_for_workers(2, START_TIMEOUT);
    let reloaded = scrape_until(addr, "the reload and every byte received in the metrics", |s| {
        s.get("chatd_generation") == 2.0
            && s.get("chatd_reloads_total{result=\"ok\"}") == 1.0
            && s.get("chatd_bytes_received_total") == sent as f64
    });
    assert_never_backwards(&before, &reloaded, "across a reload");
    assert_eq!(reloaded.get("chatd_reload_duration_seconds_count"), 1.0);
    assert_eq!(
        reloaded.get("chatd_connections_total"),
        before.get("chatd_connections_total"),
        "a hand-off is not a new connection, and the old workers' count stays"
    );
    room.chat(1, "after the reload");

    let broken = builder.clone().server_key("wrokers = 2").raw(METRICS_ON);
    std::fs::write(server.config_path(), broken.render(&server.control_socket())).unwrap();
    let out = reload(&server);
    assert!(!out.status.success(), "a broken config must fail the reload");
    std::fs::write(server.config_path(), builder.raw(METRICS_ON).render(&server.control_socket()))
        .unwrap();
    let failed = scrape_until(addr, "the failed reload", |s| {
        s.get("chatd_reloads_total{result=\"failed\"}") == 1.0
    });
    assert_never_backwards(&reloaded, &failed, "across a failed reload");

    let victim = server.worker_pids()[0];
    let lost = room.owners(&server).iter().filter(|&&pid| pid == victim).count();
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let killed = scrape_until(addr, "the restart in the metrics", |s| {
        s.get("chatd_worker_restarts_total") == 1.0
            && s.get("chatd_disconnections_total{reason=\"lost\"}") == lost as f64
    });
    assert_never_backwards(&failed, &killed, "across a killed worker");
    assert_eq!(killed.get("chatd_clients_total"), (4 - lost) as f64);
    server.wait_for_workers(2, START_TIMEOUT);
    let (_newcomer, _, _) = server.join("newcomer");
    let joined = scrape_until(addr, "the newcomer's connection", |s| {
        s.get("chatd_connections_total") == killed.get("chatd_connections_total") + 1.0
    });
    assert_never_backwards(&killed, &joined, "after the replacement");
}

#[test]
fn the_responder_answers_wrong_broken_and_slow_requests() {
    let (_server, addr) = start(ServerBuilder::new().workers(2));
    let status = |request: &[u8]| -> String {
        let answer = http(addr, request);
        answer.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 404 Not Found");
    assert_eq!(status(b"GET /metrics/x HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
    let post = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
    assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
    assert_eq!(status(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"), "HTTP/1.1 400 Bad Request");
    assert_eq!(status(b"hello there\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(status(huge.as_bytes()), "HTTP/1.1 431 Request Header Fields Too Large");

    // More stalled clients than the responder has threads, each holding a request it never
    // finishes, or saying nothing at all: each is cut off after a bounded time, and a scrape
    // behind them is answered.
    let mut stalled: Vec<TcpStream> = (0..6)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /metr").unwrap();
            }
            s
        })
        .collect();
    assert_eq!(scrape(addr).get("chatd_generation"), 1.0);
    for s in &mut stalled {
        s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("the stalled request is answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer:?}");
    }
}

#[test]
fn a_reload_opens_moves_and_closes_the_endpoint() {
    let builder = ServerBuilder::new().workers(2);
    let server = builder.clone().start();
    let write = |metrics: &str| {
        let text = builder.clone().raw(metrics).render(&server.control_socket());
        std::fs::write(server.config_path(), text).unwrap();
    };
    write(METRICS_ON);
    let out = reload(&server);
    assert!(out.status.success(), "reload: {}", output_text(&out));
    let first = metrics_addr(&server, 1);
    scrape_until(first, "generation 2", |s| s.get("chatd_generation") == 2.0);

    // An address someone else holds fails the reload; the endpoint stays where it was.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    write(&format!("[metrics]\nlisten = \"{taken_addr}\""));
    let out = reload(&server);
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains(&format!("cannot listen on {taken_addr} (metrics)")), "{text}");
    scrape_until(first, "the failed reload", |s| {
        s.get("chatd_reloads_total{result=\"failed\"}") == 1.0
    });

    drop(taken);
    let out = reload(&server);
    assert!(out.status.success(), "reload: {}", output_text(&out));
    assert_eq!(metrics_addr(&server, 2), taken_addr);
    scrape_until(taken_addr, "generation 3", |s| s.get("chatd_generation") == 3.0);
    assert!(TcpStream::connect_timeout(&first, CONNECT_TIMEOUT).is_err(), "{first} still open");

    write("[metrics]\nlisten = \"\"");
    let out = reload(&server);
    assert!(out.status.success(), "reload: {}", output_text(&out));
    server.wait_for_log("metrics endpoint closed", START_TIMEOUT);
    assert!(TcpStream::connect_timeout(&taken_addr, CONNECT_TIMEOUT).is_err());
}

/// Metric names in a PromQL expression: every `chatd_…` identifier.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("chatd_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_grafana_dashboard_names_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/grafana/chatd.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let mut exprs: Vec<String> = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: data source");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no queries");
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().expect("expr").to_string()));
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_string());
        }
    }
    let (_server, addr) = start(ServerBuilder::new().workers(2));
    let mut exported = scrape(addr).names();
    // The cluster panels: what a host in cluster mode exports besides (one NATS node is enough
    // for the names).
    let nats = common::nats::NatsCluster::start(1);
    let cluster = format!(
        "[cluster]\nenabled = true\nnats = [{:?}]\nroom = \"main\"\nnode = \"h0\"\nreplicas = 1",
        nats.url(0)
    );
    let (_host, cluster_addr) = start(ServerBuilder::new().workers(1).raw(&cluster));
    exported.extend(
        scrape_until(cluster_addr, "the cluster gauges", |s| {
            s.names().contains("chatd_cluster_connected")
        })
        .names(),
    );
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no chatd metric in {expr:?}");
        for name in names {
            assert!(exported.contains(&name), "{expr:?}: {name} is not exported: {exported:?}");
            used.insert(name);
        }
    }
    for wanted in [
        "chatd_clients_total",
        "chatd_clients",
        "chatd_room_lines_total",
        "chatd_deliveries_total",
        "chatd_disconnections_total",
        "chatd_reload_duration_seconds_bucket",
        "chatd_worker_restarts_total",
        "chatd_cluster_connected",
        "chatd_cluster_held_events",
        "chatd_cluster_last_seq",
    ] {
        assert!(used.contains(wanted), "the dashboard does not show {wanted}");
    }
}

#[test]
fn version_flag_prints_the_release() {
    for flag in ["--version", "-V"] {
        let out = run_chatd(&[flag], Duration::from_secs(20));
        assert!(out.status.success());
        let expected = format!("chatd {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
}
