//! End-to-end tests of the multi-process core (docs/architecture.md, docs/protocol.md,
//! docs/control.md): connections spread over worker processes, one room with one total order,
//! worker crashes, queued connections surviving a worker's death, shutdown, port 0 on IPv4 and
//! IPv6, config checking, leave reasons.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::room::{Room, room_server};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn distinct(pids: &[i32]) -> HashSet<i32> {
    pids.iter().copied().collect()
}

#[test]
fn spread_and_total_order() {
    const CLIENTS: usize = 40;
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 20;

    let server = room_server(4).start();
    let workers = server.wait_for_workers(4, START_TIMEOUT);
    let mut room = Room::default();
    room.join(&server, CLIENTS);

    let owners = room.owners(&server);
    let used = distinct(&owners);
    assert!(used.len() >= 2, "all {CLIENTS} clients are served by one worker: {owners:?}");
    eprintln!(
        "clients per worker: {:?}",
        owners.iter().fold(HashMap::new(), |mut m, p| {
            *m.entry(*p).or_insert(0) += 1;
            m
        })
    );

    // 10 senders spread over the join order, all writing at once.
    let senders: Vec<usize> = (0..SENDERS).map(|s| s * CLIENTS / SENDERS).collect();
    burst_in_one_order(&mut room, &senders, PER_SENDER, Duration::ZERO);

    // Numbered after all 200 (client 0 has read them all): everyone's next line, so nobody had
    // a duplicate or a stray line after the 200.
    room.chat(0, "end-of-test");
    assert_eq!(server.worker_pids(), workers, "a worker was replaced during the test");
}

/// One worker writes to a room of 600 in passes spread over several turns of its event loop,
/// while room lines keep arriving: lines that come in mid-pass must reach everyone exactly once
/// and in the room's order, whether a client was written to before or after they arrived.
#[test]
fn a_big_room_gets_every_line_once_and_in_order() {
    let server = room_server(1).start();
    server.wait_for_workers(1, START_TIMEOUT);
    let mut room = Room::default();
    room.join(&server, 600);
    let senders = [0, 199, 399, 599];
    // Paced, so that lines keep arriving while passes are under way.
    burst_in_one_order(&mut room, &senders, 50, Duration::from_micros(300));
    room.chat(300, "end-of-test");
}

#[test]
fn worker_kill_only_drops_its_clients() {
    let server = room_server(4).start();
    let workers = server.wait_for_workers(4, START_TIMEOUT);
    let mut room = Room::default();
    room.join(&server, 24);
    let owners = room.owners(&server);

    // Victim: the worker with the most clients (it has at least one; others must remain).
    let mut per_worker: HashMap<i32, usize> = HashMap::new();
    for &o in &owners {
        *per_worker.entry(o).or_insert(0) += 1;
    }
    let (&victim, _) = per_worker.iter().max_by_key(|(pid, n)| (**n, **pid)).unwrap();
    assert!(per_worker.len() >= 2, "all clients on one worker {victim}; nothing would remain");
    eprintln!("clients per worker: {per_worker:?}; killing {victim}");

    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker");

    let mut dropped = Room::default();
    let mut survivors = Room::default();
    for ((c, nick), owner) in room.clients.into_iter().zip(room.nicks).zip(&owners) {
        let r = if *owner == victim { &mut dropped } else { &mut survivors };
        r.clients.push(c);
        r.nicks.push(nick);
    }

    for c in &mut dropped.clients {
        let (lines, end) = c.read_to_close(LINE_TIMEOUT);
        assert!(lines.is_empty(), "{}: lines after its worker was killed: {lines:?}", c.label());
        assert!(end.is_closed(), "{}: expected EOF or reset, got {end}", c.label());
    }

    // Every survivor: one leave notice per dropped client, nothing else, all in the same order.
    let expected: HashSet<String> =
        dropped.nicks.iter().map(|n| format!("* {n} left (connection lost)")).collect();
    let mut first: Option<Vec<String>> = None;
    for c in &mut survivors.clients {
        let got: Vec<String> = (0..expected.len()).map(|_| c.next_line()).collect();
        assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), expected, "{}", c.label());
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "{}: leave notices in another order", c.label()),
        }
    }

    survivors.chat(0, "still here");

    // A replacement worker appears on the victim's slot.
    let old: HashSet<i32> = workers.iter().copied().collect();
    let now = server.wait_for_workers_where(4, START_TIMEOUT, "a replacement worker", |pids| {
        pids.iter().any(|p| !old.contains(p))
    });
    let fresh: Vec<i32> = now.iter().copied().filter(|p| !old.contains(p)).collect();
    assert_eq!(fresh.len(), 1, "workers before {workers:?}, after {now:?}");
    let fresh = fresh[0];
    let mut kept: Vec<i32> = now.iter().copied().filter(|&p| p != fresh).collect();
    kept.sort_unstable();
    let mut expect_kept: Vec<i32> = workers.iter().copied().filter(|&p| p != victim).collect();
    expect_kept.sort_unstable();
    assert_eq!(kept, expect_kept, "only the killed worker may be replaced");

    // New clients join until one is served by the replacement (each lands there with p = 1/4).
    let mut served_by_fresh = false;
    for _ in 0..64 {
        survivors.join(&server, 1);
        let last = survivors.clients.len() - 1;
        let owner = worker_of(survivors.clients[last].local_port(), server.port(), &now);
        assert!(
            owner.is_some(),
            "new client {} not served by any of {now:?}",
            survivors.nicks[last]
        );
        if owner == Some(fresh) {
            served_by_fresh = true;
            break;
        }
    }
    assert!(served_by_fresh, "the replacement worker {fresh} served none of 64 new clients");
    let last = survivors.clients.len() - 1;
    survivors.chat(last, "hello from the new worker");
    survivors.chat(0, "and back");
}

#[test]
fn queued_connections_survive_worker_death() {
    const NEW: usize = 48;
    let server = room_server(4).server_key("heartbeat_timeout = \"60s\"").start();
    let workers = server.wait_for_workers(4, START_TIMEOUT);
    let (mut observer, observer_nick, n) = server.join("observer");
    assert_eq!(n, 1);

    // The victim must not be the observer's worker.
    let observer_worker = worker_of(observer.local_port(), server.port(), &workers)
        .expect("the observer is served by a worker");
    let victim = *workers.iter().find(|&&w| w != observer_worker).unwrap();

    // Freeze the supervisor so the slot stays without a worker while connections arrive.
    let sup = server.pid();
    server.signal(Signal::SIGSTOP);
    wait_until(START_TIMEOUT, "the supervisor to be stopped", || {
        (process_state(sup) == Some('T')).then_some(())
    });
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker");
    // The stopped supervisor cannot reap it: a zombie means the worker has released its fds.
    wait_until(START_TIMEOUT, "the killed worker to die", || {
        (!process_alive(victim)).then_some(())
    });

    let mut clients: Vec<Client> = (0..NEW)
        .map(|i| {
            Client::try_connect(server.addr(), &format!("q{i}"))
                .unwrap_or_else(|e| panic!("connect #{i} while the slot has no worker: {e}"))
        })
        .collect();

    server.signal(Signal::SIGCONT);

    let mut nicks = Vec::new();
    let mut counts = Vec::new();
    for c in &mut clients {
        let (nick, count) = c.expect_welcome();
        nicks.push(nick);
        counts.push(count);
    }
    let unique: HashSet<&String> = nicks.iter().collect();
    assert_eq!(unique.len(), NEW, "duplicate nicks: {nicks:?}");
    assert!(!nicks.contains(&observer_nick));
    counts.sort_unstable();
    assert_eq!(counts, (2..NEW + 2).collect::<Vec<_>>(), "online counts in the welcome lines");

    // The observer sees the 48 joins, counts rising one by one.
    let mut joined = HashSet::new();
    for k in 0..NEW {
        let l = observer.next_line();
        let nick = l
            .strip_prefix("* ")
            .and_then(|r| r.strip_suffix(&format!(" joined ({} online)", k + 2)))
            .unwrap_or_else(|| panic!("expected join notice #{k} ({} online), got {l:?}", k + 2));
        assert!(joined.insert(nick.to_string()), "{nick} joined twice");
    }
    assert_eq!(joined, nicks.iter().cloned().collect::<HashSet<_>>());

    let old: HashSet<i32> = workers.iter().copied().collect();
    let now = server.wait_for_workers_where(4, START_TIMEOUT, "a replacement worker", |pids| {
        pids.iter().any(|p| !old.contains(p))
    });
    let fresh: Vec<i32> = now.iter().copied().filter(|p| !old.contains(p)).collect();
    assert_eq!(fresh.len(), 1, "workers before {workers:?}, after {now:?}");
    let ports: Vec<u16> = clients.iter().map(Client::local_port).collect();
    let owners = workers_of(&ports, server.port(), &now);
    assert!(
        owners.iter().all(Option::is_some),
        "unserved connections: {owners:?} (workers {now:?})"
    );
    let on_fresh = owners.iter().filter(|o| **o == Some(fresh[0])).count();
    eprintln!("{on_fresh} of {NEW} queued connections served by the replacement {}", fresh[0]);
    assert!(
        on_fresh >= 1,
        "the replacement worker {} serves none of the queued connections",
        fresh[0]
    );

    // And they are full members of the room.
    clients[0].send_line("queued but fine");
    let line0 = observer.expect_chat(&nicks[0], "queued but fine");
    for c in &mut clients {
        let l = c.read_until(LINE_TIMEOUT, |l| parse_chat(l).is_some()).unwrap_or_else(|e| {
            panic!("{}: no chat line: {e}; transcript {:?}", c.label(), c.transcript())
        });
        assert_eq!(l, line0, "{}", c.label());
    }
}

#[test]
fn sigterm_tells_everyone_and_exits_zero() {
    let mut server = room_server(4).start();
    let workers = server.wait_for_workers(4, START_TIMEOUT);
    let mut room = Room::default();
    room.join(&server, 12);
    let owners = room.owners(&server);
    assert!(distinct(&owners).len() >= 2, "all 12 clients on one worker: {owners:?}");

    server.signal(Signal::SIGTERM);
    for c in &mut room.clients {
        c.expect_line("* server shutting down");
        c.expect_eof();
    }
    let status = server.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(0), "supervisor exit status {status}");
    for &w in &workers {
        wait_until(START_TIMEOUT, &format!("worker {w} to be gone"), || {
            (!process_alive(w)).then_some(())
        });
    }
}

#[test]
fn port_zero_several_workers_ipv4_and_ipv6() {
    let v6 = ipv6_loopback_available();
    if !v6 {
        eprintln!("SKIPPING the IPv6 part: cannot bind [::1] on this machine");
    }
    let listen: &[&str] = if v6 { &["127.0.0.1:0", "[::1]:0"] } else { &["127.0.0.1:0"] };
    let server = room_server(3).listen(listen).start();
    let workers = server.wait_for_workers(3, START_TIMEOUT);

    let logged: Vec<(std::net::SocketAddr, usize)> =
        server.log_lines().iter().filter_map(|l| parse_listen_line(l)).collect();
    assert_eq!(logged.len(), listen.len(), "`listening on` lines: {logged:?}");
    for (addr, n) in &logged {
        assert_ne!(addr.port(), 0, "{addr}");
        assert_eq!(*n, 3, "worker count in the `listening on {addr}` line");
        // One SO_REUSEPORT listener per worker slot, all on the one chosen port.
        assert_eq!(listening_sockets(*addr), 3, "listening sockets on {addr}");
    }
    let v4_addr = logged.iter().map(|(a, _)| *a).find(|a| a.is_ipv4()).expect("an IPv4 listener");
    assert_eq!(v4_addr.ip().to_string(), "127.0.0.1");

    let (mut c4, nick4, n) = {
        let mut c = Client::connect(v4_addr, "v4");
        let (nick, n) = c.expect_welcome();
        (c, nick, n)
    };
    assert_eq!(n, 1);
    assert!(worker_of(c4.local_port(), v4_addr.port(), &workers).is_some());
    c4.send_line("hello from v4");
    c4.expect_chat(&nick4, "hello from v4");

    if !v6 {
        return;
    }
    let v6_addr = logged.iter().map(|(a, _)| *a).find(|a| a.is_ipv6()).expect("an IPv6 listener");
    assert_eq!(v6_addr.ip().to_string(), "::1");
    let mut c6 = Client::connect(v6_addr, "v6");
    let (nick6, n) = c6.expect_welcome();
    assert_eq!(n, 2);
    assert!(worker_of(c6.local_port(), v6_addr.port(), &workers).is_some());
    c4.expect_line(&format!("* {nick6} joined (2 online)"));

    c4.send_line("ping over v4");
    let a = c4.expect_chat(&nick4, "ping over v4");
    let b = c6.expect_chat(&nick4, "ping over v4");
    assert_eq!(a, b);
    c6.send_line("pong over v6");
    let a = c4.expect_chat(&nick6, "pong over v6");
    let b = c6.expect_chat(&nick6, "pong over v6");
    assert_eq!(a, b);
}

/// Runs `chatd check-config --config FILE` on `text` saved as `name` in a temp dir.
fn check_config(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = run_chatd(&["check-config", "--config", path.to_str().unwrap()], LINE_TIMEOUT);
    (out.status.code(), output_text(&out))
}

/// Does `text` contain `file:LINE:COL` for some column (digits)?
fn has_position(text: &str, file: &str, line: u32) -> bool {
    let needle = format!("{file}:{line}:");
    text.match_indices(&needle)
        .any(|(i, _)| text[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn check_config_errors() {
    // Unknown key at the start of line 3.
    let (code, out) = check_config("unknown.toml", "[server]\nworkers = 2\nwrokers = 4\n");
    assert_eq!(code, Some(1), "unknown key: {out}");
    assert!(out.contains("wrokers"), "the message must name the key: {out}");
    assert!(out.contains("unknown.toml:3:1"), "the message must give file:3:1: {out}");

    // Unknown key, indented, in another table: line 5, column 3.
    let (code, out) =
        check_config("nested.toml", "[server]\nworkers = 2\n\n[chat]\n  echoo = true\n");
    assert_eq!(code, Some(1), "unknown key: {out}");
    assert!(out.contains("echoo"), "the message must name the key: {out}");
    assert!(out.contains("nested.toml:5:3"), "the message must give file:5:3: {out}");

    // Broken TOML: a value is missing.
    let (code, out) = check_config("broken.toml", "[server]\nworkers = \nbacklog = 10\n");
    assert_eq!(code, Some(1), "broken TOML: {out}");
    assert!(has_position(&out, "broken.toml", 2), "expected broken.toml:2:COL in: {out}");

    // Broken TOML: an unclosed string.
    let (code, out) = check_config("string.toml", "[server]\nworkers = 1\nname = \"chatd\n");
    assert_eq!(code, Some(1), "unclosed string: {out}");
    assert!(has_position(&out, "string.toml", 3), "expected string.toml:3:COL in: {out}");

    // A valid file using every table.
    let valid = r#"
[server]
name = "chatd"
listen = ["127.0.0.1:0", "[::1]:0"]
workers = 3
backlog = 128
max_clients = 1000
max_clients_per_ip = 0
control_socket = "/nonexistent/chatd-test/control.sock"
heartbeat_timeout = "5s"

[socket]
nodelay = true
keepalive = "0s"
recv_buffer = 0
send_buffer = 0

[chat]
echo = true
max_line_bytes = 1024
history = 100
history_on_join = 0
message_format = "{time} <{nick}> {text}"
time_format = "%H:%M:%S"
rate_limit = { messages = 0 }
max_backlog_bytes = 1048576
idle_timeout = "0s"

[reload]
handoff = true
drain_timeout = "30s"
"#;
    let (code, out) = check_config("valid.toml", valid);
    assert_eq!(code, Some(0), "valid config rejected: {out}");
    let (code, out) = check_config("empty.toml", "");
    assert_eq!(code, Some(0), "every key is optional, an empty file is valid: {out}");
}

/// check-config reports *every* error with file:line:column, not only syntax and unknown keys
/// (docs/configuration.md, "What is checked").
#[test]
fn check_config_rejects_bad_values() {
    let (code, out) = check_config("value.toml", "[server]\nworkers = 0\n");
    assert_eq!(code, Some(1), "workers = 0: {out}");
    assert!(out.contains("workers"), "the message must name the key: {out}");
    assert!(has_position(&out, "value.toml", 2), "expected value.toml:2:COL in: {out}");

    let (code, out) = check_config("listen.toml", "[server]\nlisten = [\"not an address\"]\n");
    assert_eq!(code, Some(1), "bad listen address: {out}");
    assert!(has_position(&out, "listen.toml", 2), "expected listen.toml:2:COL in: {out}");
}

#[test]
fn quit_and_leave_reasons() {
    let server = room_server(2).start();
    let (mut observer, observer_nick, n) = server.join("observer");
    assert_eq!(n, 1);

    let cases: &[(Option<&str>, &str)] = &[
        (Some("/quit"), "quit"),
        (Some("quit"), "quit"),
        (Some("/quit bye now"), "quit: bye now"),
        (Some("/QUIT"), "quit"),
        (None, "connection closed"),
    ];
    for (i, (send, reason)) in cases.iter().enumerate() {
        let (mut c, nick, n) = server.join(&format!("leaver{i}"));
        assert_eq!(n, 2);
        observer.expect_line(&format!("* {nick} joined (2 online)"));
        match send {
            Some(line) => {
                c.send_line(line);
                observer.expect_line(&format!("* {nick} left ({reason})"));
                let (lines, end) = c.read_to_close(LINE_TIMEOUT);
                assert!(
                    lines.iter().all(|l| l.starts_with("* ")),
                    "{line:?}: only notices may precede the close, got {lines:?}"
                );
                assert!(matches!(end, ReadError::Eof), "{line:?}: expected EOF, got {end}");
            }
            None => {
                drop(c);
                observer.expect_line(&format!("* {nick} left ({reason})"));
            }
        }
    }
    // The observer was unaffected and is alone again.
    let (mut last, nick, n) = server.join("last");
    assert_eq!(n, 2, "all leavers must be gone from the room");
    observer.expect_line(&format!("* {nick} joined (2 online)"));
    observer.send_line("still talking");
    let a = observer.expect_chat(&observer_nick, "still talking");
    let b = last.expect_chat(&observer_nick, "still talking");
    assert_eq!(a, b);
}

/// The clients at `senders` each send `per_sender` numbered lines, all at once; every client
/// must read all of them, each sender's in send order, in one and the same order. Each sender
/// waits `pace` after each line.
fn burst_in_one_order(room: &mut Room, senders: &[usize], per_sender: usize, pace: Duration) {
    let total = senders.len() * per_sender;
    let barrier = Arc::new(Barrier::new(senders.len()));
    let threads: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(s, &ci)| {
            let mut w = room.clients[ci].writer();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                use std::io::Write;
                barrier.wait();
                for j in 0..per_sender {
                    w.write_all(format!("m-{s}-{j}\n").as_bytes()).expect("send");
                    thread::sleep(pace);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }

    let read_messages =
        |c: &mut Client| -> Vec<String> { (0..total).map(|_| c.next_line()).collect() };
    let reference = read_messages(&mut room.clients[0]);

    // The reference sequence: every chat line, each message once, each sender in send order,
    // under the sender's nick.
    let mut next_of_sender = vec![0usize; senders.len()];
    for line in &reference {
        let chat = parse_chat(line).unwrap_or_else(|| panic!("not a chat line: {line:?}"));
        let (s, j) = chat
            .text
            .strip_prefix("m-")
            .and_then(|r| r.split_once('-'))
            .and_then(|(s, j)| Some((s.parse::<usize>().ok()?, j.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("unexpected chat text: {line:?}"));
        assert!(s < senders.len() && j < per_sender, "unexpected message {line:?}");
        assert_eq!(chat.nick, room.nicks[senders[s]], "wrong nick on {line:?}");
        assert_eq!(
            j, next_of_sender[s],
            "sender {s}: got message {j}, expected {}",
            next_of_sender[s]
        );
        next_of_sender[s] += 1;
    }
    assert!(next_of_sender.iter().all(|&n| n == per_sender), "{next_of_sender:?}");

    for (i, c) in room.clients.iter_mut().enumerate().skip(1) {
        let got = read_messages(c);
        if got != reference {
            let at = got.iter().zip(&reference).position(|(a, b)| a != b).unwrap();
            panic!(
                "client {i} ({}) sees another order: first difference at #{at}: {:?} vs {:?} on client 0",
                room.nicks[i], got[at], reference[at]
            );
        }
    }
}
