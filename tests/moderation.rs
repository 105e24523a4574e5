//! End-to-end tests of moderation and the audit log (docs/operations.md, "Moderation" and
//! "Audit log") against the real binary with two workers and clients on both: reserved nicks,
//! the connect / nick / disconnect log lines with the worker in their prefix, and the control
//! commands `who`, `say`, `kick`, `ban`, `unban`, `bans` with their lines and exit codes.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::room::{Room, room_server};
use common::*;

/// How long a control command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// `chatd status --json`: each worker's slot and generation by pid.
fn worker_names(server: &Server) -> HashMap<i32, String> {
    let out = server.run(&["status", "--json"], CONTROL_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let workers = status["workers"].as_array().expect("workers");
    workers
        .iter()
        .map(|w| {
            let pid = w["pid"].as_i64().expect("pid") as i32;
            (pid, format!("worker {}/g{}", w["slot"], w["generation"]))
        })
        .collect()
}

/// The log line of the process named `who` that ends with `: WHAT`.
fn wait_for_audit(server: &Server, who: &str, what: &str) -> String {
    let line = server.wait_for_log(&format!("{who}: {what}"), LINE_TIMEOUT);
    assert!(line.ends_with(&format!("{who}: {what}")), "{line}");
    assert!(line.contains(" INFO "), "audit lines are info lines: {line}");
    line
}

#[test]
fn reserved_nicks_are_refused_case_insensitively() {
    let server = room_server(2).chat_key(r#"reserved_nicks = ["admin", "Ops-1"]"#).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    for nick in ["admin", "ADMIN", "ops-1"] {
        room.clients[a].send_line(&format!("/nick {nick}"));
        room.clients[a].expect_line(&format!("! nickname '{nick}' is reserved"));
    }
    // Nobody else saw anything; a free nick still works.
    room.clients[b].send_line("/nick administrator");
    room.expect_all(&format!("* {} is now known as administrator", room.nicks[b]));
}

#[test]
fn the_default_reserved_nicks_include_server() {
    let server = room_server(2).start();
    let (mut c, _, _) = server.join("c");
    c.send_line("/nick Server");
    c.expect_line("! nickname 'Server' is reserved");
}

#[test]
fn the_audit_log_names_the_worker_serving_each_client() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    let names = worker_names(&server);
    let owners = room.owners(&server);
    assert_ne!(names[&owners[a]], names[&owners[b]]);
    for i in [a, b] {
        let addr = room.clients[i].local_addr();
        wait_for_audit(
            &server,
            &names[&owners[i]],
            &format!("connect {addr} as {}", room.nicks[i]),
        );
    }
    let addr = room.clients[a].local_addr();
    let old = room.nicks[a].clone();
    room.clients[a].send_line("/nick alice");
    room.expect_all(&format!("* {old} is now known as alice"));
    room.nicks[a] = "alice".into();
    wait_for_audit(&server, &names[&owners[a]], &format!("nick {old} -> alice ({addr})"));
    room.clients[a].send_line("/quit gone fishing");
    room.clients[b].expect_line("* alice left (quit: gone fishing)");
    let who = &names[&owners[a]];
    let what = format!("{who}: disconnect alice {addr} (quit: gone fishing) after ");
    let line = server.wait_for_log(&what, LINE_TIMEOUT);
    let after = line.split(&what).nth(1).expect("duration");
    assert!(after.ends_with('s') && after.len() <= 6, "{line}");
    // Between the two, nobody else's connection was logged by the wrong worker.
    let other = &names[&owners[b]];
    assert!(!server.log_contains(&format!("{other}: disconnect alice")));
}

#[test]
fn the_audit_log_can_be_turned_off() {
    let server = room_server(2).raw("[log]\nconnections = false").start();
    let (mut c, nick, _) = server.join("c");
    c.send_line("/nick bob");
    c.expect_line(&format!("* {nick} is now known as bob"));
    c.send_line("/quit");
    c.expect_eof();
    // The supervisor's own line for a later event proves the log is not just behind.
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    server.wait_for_log_count("listening on", 2, LINE_TIMEOUT);
    for word in [": connect ", ": nick ", ": disconnect "] {
        assert!(!server.log_contains(word), "{word} logged with [log] connections = false");
    }
}

const METRICS_ON: &str = "[metrics]\nlisten = \"127.0.0.1:0\"";

/// The value of one series (`name{labels}`) on the server's `/metrics`.
fn metric(server: &Server, series: &str) -> f64 {
    let line = server.wait_for_log("serving metrics on http://", LINE_TIMEOUT);
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("metrics address in {line:?}"));
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(LINE_TIMEOUT)).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("ask");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read /metrics");
    let prefix = format!("{series} ");
    let value = answer.lines().find_map(|l| l.strip_prefix(&prefix));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {series} in {answer}"))
}

/// Waits until `series` reads `value` (the endpoint serves the snapshot of the last tick).
fn wait_for_metric(server: &Server, series: &str, value: f64) {
    let what = format!("{series} = {value}");
    wait_until(LINE_TIMEOUT, &what, || (metric(server, series) == value).then_some(()));
}

/// Runs `chatd ARGS` against `server`; returns (exit code, stdout, stderr).
fn chatd(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = server.run(args, CONTROL_TIMEOUT);
    let code = out.status.code().expect("exit code");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (code, text(&out.stdout), text(&out.stderr))
}

#[test]
fn say_sends_a_numbered_notice_to_everyone() {
    let server = room_server(2).chat_key(r#"history_events = "all""#).raw(METRICS_ON).start();
    let mut room = Room::spread(&server, 3);
    assert_eq!(metric(&server, "chatd_room_lines_total{kind=\"notice\"}"), 0.0);
    let (code, stdout, stderr) = chatd(&server, &["say", "maintenance", "at", "noon"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "said to 3 online");
    room.expect_all("* notice: maintenance at noon");
    wait_for_metric(&server, "chatd_room_lines_total{kind=\"notice\"}", 1.0);
    // A room line: in history with history_events = "all", in its place in the order.
    room.sync(0, "after");
    room.clients[1].send_line("/history 2");
    let notice = room.clients[1].next_line();
    assert_eq!(notice, "* notice: maintenance at noon");
    // Nothing to say is an error.
    let (code, _, stderr) = chatd(&server, &["say", " "]);
    assert_eq!((code, stderr.trim()), (1, "chatd say: nothing to say"));
}

#[test]
fn kick_disconnects_with_and_without_a_reason() {
    let server = room_server(2).raw(METRICS_ON).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    room.clients[a].send_line("/nick Troll");
    room.expect_all(&format!("* {} is now known as Troll", room.nicks[a]));
    room.nicks[a] = "Troll".into();

    // Any case finds the nick; the reason reaches the client and the room.
    let (code, stdout, stderr) = chatd(&server, &["kick", "troll", "be", "nice"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "kicked Troll");
    let mut kicked = room.clients.remove(a);
    room.nicks.remove(a);
    kicked.expect_line("* you were kicked: be nice");
    kicked.expect_eof();
    room.expect_all("* Troll left (kicked: be nice)");

    // Without a reason; the client is on another worker than the first.
    let i = if b > a { b - 1 } else { b };
    let nick = room.nicks[i].clone();
    let (code, _, stderr) = chatd(&server, &["kick", &nick]);
    assert_eq!(code, 0, "{stderr}");
    let mut kicked = room.clients.remove(i);
    room.nicks.remove(i);
    kicked.expect_line("* you were kicked");
    kicked.expect_eof();
    room.expect_all(&format!("* {nick} left (kicked)"));

    let (code, stdout, stderr) = chatd(&server, &["kick", "nobody"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(stderr.trim(), "chatd kick: no such nick 'nobody'");
    wait_for_metric(&server, "chatd_disconnections_total{reason=\"kicked\"}", 2.0);
    server.wait_for_log("supervisor: kicked Troll (be nice)", LINE_TIMEOUT);
    wait_for_audit_end(&server, "Troll", "kicked: be nice");
}

/// Waits for the audit line of `nick`'s disconnect with `reason`, from any worker.
fn wait_for_audit_end(server: &Server, nick: &str, reason: &str) -> String {
    let pattern = format!(": disconnect {nick} 127.0.0.1:");
    let line = server.wait_for_log(&pattern, LINE_TIMEOUT);
    assert!(line.contains(&format!(" ({reason}) after ")), "{line}");
    assert!(line.contains(" worker "), "{line}");
    line
}

#[test]
fn who_lists_every_session_across_workers() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 3);
    let names = worker_names(&server);
    let owners = room.owners(&server);
    room.sync(0, "ready");
    let (code, stdout, stderr) = chatd(&server, &["who", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let who: serde_json::Value = serde_json::from_str(&stdout).expect("who --json is JSON");
    let who = who.as_array().expect("an array");
    assert_eq!(who.len(), 3, "{stdout}");
    for (i, c) in room.clients.iter().enumerate() {
        let entry = who
            .iter()
            .find(|e| e["nick"] == room.nicks[i].as_str())
            .unwrap_or_else(|| panic!("{} missing: {stdout}", room.nicks[i]));
        assert_eq!(entry["addr"], c.local_addr().to_string().as_str());
        let slot = format!("worker {}/", entry["slot"]);
        assert!(names[&owners[i]].starts_with(&slot), "{entry} is served by {}", names[&owners[i]]);
        assert_eq!(entry["transport"], "tcp");
        assert!(entry["connected_s"].as_u64().is_some(), "{entry}");
        assert!(entry["idle_s"].as_u64().is_some(), "every worker answered: {entry}");
        assert_eq!(entry["queued_bytes"], 0, "{entry}");
    }
    let (code, stdout, _) = chatd(&server, &["who"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("nick ") && lines[0].contains("idle"), "{stdout}");
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[4], "3 online");
    for nick in &room.nicks {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{nick} "))), "{stdout}");
    }
}

/// Connects from `source` and reads the welcome; returns the client and its nick.
fn join_from(server: &Server, source: &str, label: &str) -> (Client, String) {
    let mut c = Client::connect_from(server.addr(), source.parse().expect("ip"), label);
    let (nick, _) = c.expect_welcome();
    (c, nick)
}

/// A connection from `source` is refused: `! you are banned`, then the end.
fn expect_banned(server: &Server, source: &str) {
    let mut c = Client::connect_from(server.addr(), source.parse().expect("ip"), "banned");
    let (lines, end) = c.read_to_close(LINE_TIMEOUT);
    assert_eq!(lines, ["! you are banned"], "from {source}");
    assert!(end.is_closed(), "from {source}: {end}");
}

/// `chatd bans --json`.
fn bans(server: &Server) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = chatd(server, &["bans", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let bans: serde_json::Value = serde_json::from_str(&stdout).expect("bans --json is JSON");
    bans.as_array().expect("an array").clone()
}

#[test]
fn a_ban_by_prefix_kicks_across_workers_and_refuses_new_connections() {
    let server = room_server(2).raw(METRICS_ON).start();
    let (mut bystander, _) = join_from(&server, "127.0.0.1", "bystander");
    // Clients from 127.0.0.2 and 127.0.0.3 until two workers serve them.
    let mut doomed: Vec<(Client, String)> = Vec::new();
    let owners = |doomed: &[(Client, String)]| -> Vec<i32> {
        let ports: Vec<u16> = doomed.iter().map(|(c, _)| c.local_port()).collect();
        let pids = server.worker_pids();
        workers_of(&ports, server.port(), &pids).into_iter().flatten().collect()
    };
    for i in 0..40 {
        let (c, nick) = join_from(&server, &format!("127.0.0.{}", 2 + i % 2), "doomed");
        let notice = format!("* {nick} joined ({} online)", doomed.len() + 2);
        bystander.expect_line(&notice);
        for (other, _) in &mut doomed {
            other.expect_line(&notice);
        }
        doomed.push((c, nick));
        let mut seen = owners(&doomed);
        seen.sort_unstable();
        seen.dedup();
        if doomed.len() >= 2 && seen.len() >= 2 {
            break;
        }
    }
    assert!(doomed.len() < 40, "40 clients never landed on two workers");

    let (code, stdout, stderr) =
        chatd(&server, &["ban", "127.0.0.2/31", "--for", "1h", "go", "away"]);
    assert_eq!(code, 0, "{stderr}");
    let nicks: Vec<String> = doomed.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        stdout.trim(),
        format!("banned 127.0.0.2/31 for 1h00m; kicked {}", nicks.join(", "))
    );
    for (c, _) in &mut doomed {
        let (lines, end) = c.read_to_close(LINE_TIMEOUT);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("* you were kicked: go away"),
            "{lines:?}"
        );
        assert!(end.is_closed(), "{end}");
    }
    for nick in &nicks {
        bystander.expect_line(&format!("* {nick} left (kicked: go away)"));
    }
    expect_banned(&server, "127.0.0.3");
    // Never announced: the bystander's next line is its own.
    bystander.send_line("still here");
    bystander.expect_chat("guest-1", "still here");
    wait_for_metric(&server, "chatd_rejected_total{reason=\"banned\"}", 1.0);
    let kicked = nicks.len() as f64;
    wait_for_metric(&server, "chatd_disconnections_total{reason=\"banned\"}", kicked);

    let listed = bans(&server);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["target"], "127.0.0.2/31");
    assert_eq!(listed[0]["reason"], "go away");
    assert_eq!(listed[0]["source"], "command");
    let left = listed[0]["left_s"].as_u64().expect("time left");
    assert!((3500..=3600).contains(&left), "{left}");
    let (code, table, _) = chatd(&server, &["bans"]);
    assert_eq!(code, 0);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("127.0.0.2/31 ")), "{table}");

    // Lifting it lets the address back in; lifting it twice is an error.
    let (code, stdout, _) = chatd(&server, &["unban", "127.0.0.2/31"]);
    assert_eq!((code, stdout.trim()), (0, "unbanned 127.0.0.2/31"));
    join_from(&server, "127.0.0.3", "back");
    let (code, _, stderr) = chatd(&server, &["unban", "127.0.0.2/31"]);
    assert_eq!((code, stderr.trim()), (1, "chatd unban: no ban on 127.0.0.2/31"));
    let (code, stdout, _) = chatd(&server, &["bans"]);
    assert_eq!((code, stdout.trim()), (0, "no bans"));
}

#[test]
fn a_ban_for_a_while_expires() {
    let server = room_server(2).start();
    let (code, _, stderr) = chatd(&server, &["ban", "--for", "2s", "127.0.0.4"]);
    assert_eq!(code, 0, "{stderr}");
    expect_banned(&server, "127.0.0.4");
    // Other addresses are welcome meanwhile.
    join_from(&server, "127.0.0.5", "other");
    let c = wait_until(Duration::from_secs(20), "the ban to expire", || {
        let mut c = Client::connect_from(server.addr(), "127.0.0.4".parse().unwrap(), "later");
        let line = c.read_line(LINE_TIMEOUT).ok()?;
        (line != "! you are banned").then_some((c, line))
    });
    assert!(c.1.starts_with("* Welcome to chatd."), "{}", c.1);
    let (code, stdout, _) = chatd(&server, &["bans"]);
    assert_eq!((code, stdout.trim()), (0, "no bans"));
}

#[test]
fn bans_survive_a_reload_and_the_config_bans_for_good() {
    let server = room_server(2).raw("[moderation]\nbanned = [\"127.0.0.6\"]").start();
    expect_banned(&server, "127.0.0.6");
    let (code, _, stderr) = chatd(&server, &["unban", "127.0.0.6"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("[moderation] banned"), "{stderr}");
    let (code, _, stderr) = chatd(&server, &["ban", "127.0.0.7", "flooding"]);
    assert_eq!(code, 0, "{stderr}");
    let (mut stays, stays_nick) = join_from(&server, "127.0.0.1", "stays");
    let (mut goes, goes_nick) = join_from(&server, "127.0.0.8", "goes");
    stays.expect_line(&format!("* {goes_nick} joined (2 online)"));

    // The reload bans 127.0.0.8 in the file too: it is kicked; the command's ban stays.
    let config = std::fs::read_to_string(server.config_path()).expect("config");
    let config = config.replace("[\"127.0.0.6\"]", "[\"127.0.0.6\", \"127.0.0.8\"]");
    std::fs::write(server.config_path(), config).expect("write config");
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    assert!(out.status.success(), "{}", output_text(&out));
    let (lines, end) = goes.read_to_close(LINE_TIMEOUT);
    assert_eq!(lines, ["* you were kicked"]);
    assert!(end.is_closed(), "{end}");
    stays.expect_line(&format!("* {goes_nick} left (kicked)"));
    for banned in ["127.0.0.6", "127.0.0.7", "127.0.0.8"] {
        expect_banned(&server, banned);
    }
    let listed = bans(&server);
    let targets: Vec<(&str, &str)> = listed
        .iter()
        .map(|b| (b["target"].as_str().unwrap(), b["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        targets,
        [("127.0.0.7", "command"), ("127.0.0.6", "config"), ("127.0.0.8", "config")]
    );
    assert_eq!(listed[0]["left_s"], serde_json::Value::Null);
    assert_eq!(listed[0]["reason"], "flooding");
    stays.send_line("/nick stays");
    stays.expect_line(&format!("* {stays_nick} is now known as stays"));
}

#[test]
fn ban_arguments_are_checked() {
    let server = room_server(2).start();
    for (args, error) in [
        (&["ban", "example.com"][..], "chatd ban: 'example.com' is not an address or prefix"),
        (&["ban", "10.0.0.0/33"][..], "chatd ban: '10.0.0.0/33' is not an address or prefix"),
        (&["ban", "10.0.0.1", "--for", "0s"][..], "chatd ban: --for: a ban must last longer"),
        (&["ban", "10.0.0.1", "--for", "soon"][..], "chatd ban: --for: expected a duration"),
        (&["unban", "nope"][..], "chatd unban: 'nope' is not an address or prefix"),
    ] {
        let (code, stdout, stderr) = chatd(&server, args);
        assert_eq!((code, stdout.as_str()), (1, ""), "{args:?}");
        assert!(stderr.starts_with(error), "{args:?}: {stderr}");
    }
    assert!(bans(&server).is_empty());
}
