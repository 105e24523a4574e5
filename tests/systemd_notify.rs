//! The sd_notify protocol of `chatd serve` (docs/control.md, "systemd"), without systemd: each test
//! binds the unix datagram socket systemd would, points `NOTIFY_SOCKET` at it and starts the real
//! server. Every datagram is recorded with its arrival time, so the tests check what systemd would
//! see: `READY=1` only once every worker accepts, `STATUS=` text and updates, `RELOADING=1` with
//! `MONOTONIC_USEC=` then `READY=1` around a reload, `STOPPING=1` on SIGTERM, `WATCHDOG=1` pings
//! only with `WATCHDOG_USEC`, and a hung worker replaced.
//!
//! The reload tests follow docs/control.md, "Reload" and "systemd".

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// The notify socket
// ---------------------------------------------------------------------------------------------

/// One datagram: its `KEY=VALUE` lines, in order, and when it arrived.
#[derive(Clone, Debug)]
struct Notification {
    at: Instant,
    fields: Vec<(String, String)>,
}

impl Notification {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

#[derive(Default)]
struct Received {
    list: Mutex<Vec<Notification>>,
    changed: Condvar,
}

/// The socket systemd would listen on, with a thread recording every datagram.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let received = Arc::new(Received::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = socket.recv(&mut buf) else { continue };
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let fields = text
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| match l.split_once('=') {
                            Some((k, v)) => (k.to_string(), v.to_string()),
                            None => (l.to_string(), String::new()),
                        })
                        .collect();
                    received.list.lock().unwrap().push(Notification { at, fields });
                    received.changed.notify_all();
                }
            })
        };
        NotifySocket { path, received, stop, thread: Some(thread) }
    }

    fn all(&self) -> Vec<Notification> {
        self.received.list.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.received.list.lock().unwrap().len()
    }

    /// Waits for the first datagram at index `from` or later that satisfies `pred`; returns
    /// its index and a copy. Panics after `timeout`, listing everything received.
    fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Notification) -> bool,
    ) -> (usize, Notification) {
        let deadline = Instant::now() + timeout;
        let mut list = self.received.list.lock().unwrap();
        loop {
            if let Some(i) = (from..list.len()).find(|&i| pred(&list[i])) {
                return (i, list[i].clone());
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; received: {:#?}", *list);
            }
            list = self.received.changed.wait_timeout(list, deadline - now).unwrap().0;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `STATUS=` must read exactly `N workers, M clients, generation G` (docs/control.md, "systemd");
/// returns the three numbers, or `None` for any other text (a failed reload's suffix included).
fn parse_status(s: &str) -> Option<(u64, u64, u64)> {
    fn number(s: &str) -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    }
    let (w, rest) = s.split_once(" workers, ")?;
    let (c, g) = rest.split_once(" clients, generation ")?;
    Some((number(w)?, number(c)?, number(g)?))
}

// ---------------------------------------------------------------------------------------------
// The server, started the way systemd starts it
// ---------------------------------------------------------------------------------------------

/// `chatd serve` with `NOTIFY_SOCKET` (and optionally `WATCHDOG_USEC`) set, in its own process
/// group; SIGKILLed with all its descendants on drop.
struct NotifiedServer {
    child: Child,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    notify: NotifySocket,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl NotifiedServer {
    fn start(builder: ServerBuilder, watchdog_usec: Option<u64>) -> NotifiedServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("chatd.toml");
        fs::write(&config, builder.render(&dir.path().join("control.sock"))).unwrap();
        let notify = NotifySocket::bind(dir.path());
        let mut cmd = Command::new(CHATD);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(usec) = watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec.to_string());
        }
        let mut child = cmd.spawn().expect("spawn chatd serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        NotifiedServer { child, config, log, notify, exit: None, _dir: dir }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the startup `READY=1`; returns its datagram.
    fn wait_ready(&self) -> Notification {
        self.notify.wait_from(0, START_TIMEOUT, "READY=1", |n| n.has("READY", "1")).1
    }

    /// The address from the `listening on IP:PORT with N workers` log line (docs/control.md,
    /// "Status").
    fn listen_addr(&self) -> std::net::SocketAddr {
        wait_until(LINE_TIMEOUT, "the `listening on` log line", || {
            self.log.lock().unwrap().iter().find_map(|l| parse_listen_line(l)).map(|(a, _)| a)
        })
    }

    /// Runs `chatd ARGS... --config <this server's config>`.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        run_chatd(&all, START_TIMEOUT)
    }

    /// `chatd status --json`, parsed.
    fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert!(out.status.success(), "chatd status --json failed: {}", output_text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("chatd status --json: {e}: {}", output_text(&out)))
    }

    /// (slot, pid, generation) of every worker in `chatd status --json`, sorted by slot.
    fn workers(&self) -> Vec<(u64, i32, u64)> {
        let status = self.status_json();
        let mut out: Vec<(u64, i32, u64)> = status["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("no workers array in {status}"))
            .iter()
            .map(|w| {
                (
                    w["slot"].as_u64().unwrap(),
                    w["pid"].as_i64().unwrap() as i32,
                    w["generation"].as_u64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = wait_until(timeout, "chatd serve to exit", || child.try_wait().unwrap());
        self.exit = Some(status);
        status
    }
}

impl Drop for NotifiedServer {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
        if thread::panicking() {
            print_log("chatd log", &self.log.lock().unwrap());
            eprintln!("----- notifications -----");
            for n in self.notify.all() {
                eprintln!("{:?}", n.fields);
            }
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn status_parser_is_strict() {
    assert_eq!(parse_status("4 workers, 1234 clients, generation 3"), Some((4, 1234, 3)));
    for bad in [
        "4 workers, 1234 clients, generation 3; last reload failed: x",
        "4 workers,  1 clients, generation 3",
        "four workers, 1 clients, generation 3",
        "4 workers, 1 clients, generation ",
        "4 workers, 1 clients",
    ] {
        assert_eq!(parse_status(bad), None, "{bad:?}");
    }
}

/// `READY=1` comes once, only when every worker accepts: its own `STATUS=` counts all four
/// workers, and clients connecting the moment it arrives are welcomed at once. `STATUS=`
/// follows the number of clients. No `WATCHDOG=1` without `WATCHDOG_USEC`.
#[test]
fn ready_after_workers_accept_and_status_follows_clients() {
    let server = NotifiedServer::start(
        ServerBuilder::new().workers(4).chat_key("history_on_join = 0"),
        None,
    );
    let ready = server.wait_ready();
    let addr = server.listen_addr();
    // Right away, more connections than workers (SO_REUSEPORT spreads them): each must be
    // accepted and welcomed promptly, i.e. every worker was already accepting.
    let mut clients: Vec<Client> = (0..8)
        .map(|i| {
            let mut c = Client::connect(addr, &format!("early{i}"));
            match c.read_line(Duration::from_secs(5)) {
                Ok(l) if parse_welcome(&l).is_some() => {}
                other => panic!("client {i} right after READY=1: {other:?} instead of a welcome"),
            }
            c
        })
        .collect();
    let connected_at = Instant::now();
    assert_eq!(
        ready.get("STATUS"),
        Some("4 workers, 0 clients, generation 1"),
        "STATUS= sent with READY=1 must count every worker as ready: {:?}",
        ready.fields
    );
    assert!(ready.at <= connected_at);

    // STATUS= follows the room: 8 clients, then 3.
    let (i8, _) = server.notify.wait_from(0, LINE_TIMEOUT, "STATUS= with 8 clients", |n| {
        n.has("STATUS", "4 workers, 8 clients, generation 1")
    });
    clients.truncate(3);
    let (i3, _) = server.notify.wait_from(i8 + 1, LINE_TIMEOUT, "STATUS= with 3 clients", |n| {
        n.has("STATUS", "4 workers, 3 clients, generation 1")
    });
    assert!(i3 > i8);

    let all = server.notify.all();
    let readies = all.iter().filter(|n| n.get("READY").is_some()).count();
    assert_eq!(readies, 1, "exactly one READY=1 at startup: {all:#?}");
    for n in &all {
        if let Some(s) = n.get("STATUS") {
            assert!(parse_status(s).is_some(), "malformed STATUS={s:?}");
        }
        for key in ["RELOADING", "STOPPING", "WATCHDOG"] {
            assert!(n.get(key).is_none(), "{key}= without reload, stop or WATCHDOG_USEC: {n:?}");
        }
    }
}

/// SIGTERM: `STOPPING=1`, every client reads `* server shutting down` then EOF, exit 0.
#[test]
fn sigterm_sends_stopping() {
    let mut server = NotifiedServer::start(
        ServerBuilder::new().workers(2).chat_key("history_on_join = 0"),
        None,
    );
    server.wait_ready();
    let addr = server.listen_addr();
    let mut clients: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = Client::connect(addr, &format!("c{i}"));
            c.expect_welcome();
            c
        })
        .collect();
    server.notify.wait_from(0, LINE_TIMEOUT, "STATUS= with 3 clients", |n| {
        n.has("STATUS", "2 workers, 3 clients, generation 1")
    });
    let before = server.notify.count();
    kill(Pid::from_raw(server.pid()), Signal::SIGTERM).unwrap();
    let (_, stopping) = server
        .notify
        .wait_from(before, LINE_TIMEOUT, "STOPPING=1", |n| n.get("STOPPING").is_some());
    assert_eq!(stopping.get("STOPPING"), Some("1"), "{:?}", stopping.fields);
    for c in &mut clients {
        c.read_until(LINE_TIMEOUT, |l| l == "* server shutting down")
            .unwrap_or_else(|e| panic!("{}: no shutdown notice: {e}", c.label()));
        c.expect_eof();
    }
    let status = server.wait_exit(START_TIMEOUT);
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let after: Vec<Notification> = server.notify.all().split_off(before);
    assert!(
        after.iter().all(|n| n.get("READY").is_none() && n.get("RELOADING").is_none()),
        "READY/RELOADING after SIGTERM: {after:#?}"
    );
}

/// With `WATCHDOG_USEC`, `WATCHDOG=1` comes regularly (well within the interval). A worker
/// stopped with SIGSTOP misses its heartbeats: it is killed and its slot gets a new worker
/// (a new pid in `chatd status --json`); no ping comes while it is silent past the timeout, and
/// the pings go on once the slot is served again.
#[test]
fn watchdog_pings_and_hung_worker_is_replaced() {
    const WATCHDOG: Duration = Duration::from_secs(2);
    let server = NotifiedServer::start(
        ServerBuilder::new().workers(2).server_key("heartbeat_timeout = \"2s\""),
        Some(WATCHDOG.as_micros() as u64),
    );
    let ready = server.wait_ready();
    let is_ping = |n: &Notification| n.get("WATCHDOG").is_some();
    // Four pings in a row; none may be late (systemd would kill the service).
    let mut pings = Vec::new();
    let mut from = 0;
    while pings.len() < 4 {
        let (i, n) = server.notify.wait_from(from, 3 * WATCHDOG, "WATCHDOG=1", is_ping);
        assert_eq!(n.get("WATCHDOG"), Some("1"), "{:?}", n.fields);
        pings.push(n.at);
        from = i + 1;
    }
    let mut last = ready.at;
    for at in &pings {
        assert!(
            *at - last < WATCHDOG,
            "watchdog ping {:?} after the previous one (interval {WATCHDOG:?})",
            *at - last
        );
        last = *at;
    }

    let before = server.workers();
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|w| w.2 == 1), "{before:?}");
    let (slot, hung, _) = before[0];
    assert!(worker_children(server.pid()).contains(&hung), "{hung} is not a child worker");
    let stopped_at = Instant::now();
    kill(Pid::from_raw(hung), Signal::SIGSTOP).unwrap();
    let after = wait_until(Duration::from_secs(15), "the hung worker's replacement", || {
        let w = server.workers();
        let replaced = w.iter().any(|&(s, p, _)| s == slot && p != hung);
        (replaced && w.len() == 2).then_some(w)
    });
    let replaced_at = Instant::now();
    let (_, new_pid, generation) = *after.iter().find(|w| w.0 == slot).unwrap();
    assert_eq!(generation, 1, "a replacement is not a reload");
    assert_ne!(new_pid, hung);
    assert_eq!(after.iter().find(|w| w.0 != slot), before.iter().find(|w| w.0 != slot));
    wait_until(LINE_TIMEOUT, "the hung worker to be killed", || {
        (!process_alive(hung)).then_some(())
    });
    // The worker had sent its last heartbeat before SIGSTOP; from 2 s (the timeout) after
    // that, with margin for delivery, no ping may come until its slot has a new worker.
    let silent_from = stopped_at + Duration::from_millis(2500);
    let bad: Vec<Duration> = server
        .notify
        .all()
        .iter()
        .filter(|n| is_ping(n) && n.at > silent_from && n.at < replaced_at)
        .map(|n| n.at - stopped_at)
        .collect();
    assert!(bad.is_empty(), "WATCHDOG=1 while a worker was hung, at {bad:?} after SIGSTOP");
    // Pings resume.
    let count = server.notify.count();
    let (i, _) = server.notify.wait_from(count, 3 * WATCHDOG, "WATCHDOG=1 after recovery", is_ping);
    server.notify.wait_from(i + 1, 3 * WATCHDOG, "a second WATCHDOG=1 after recovery", is_ping);
    // And the status says so: the latest STATUS= counts both workers again.
    wait_until(LINE_TIMEOUT, "the latest STATUS= to count 2 workers", || {
        let all = server.notify.all();
        let last = all.iter().rev().find_map(|n| n.get("STATUS").map(str::to_string));
        (last.as_deref() == Some("2 workers, 0 clients, generation 1")).then_some(())
    });
}

/// A successful reload (docs/control.md, "Reload"): `RELOADING=1` with `MONOTONIC_USEC=` (now, on
/// CLOCK_MONOTONIC), then `READY=1`, then STATUS= with generation 2; `chatd reload` returns 0
/// after that; every worker is new; a connected client stays connected with its nick.
#[test]
fn reload_sends_reloading_then_ready() {
    let server = NotifiedServer::start(
        ServerBuilder::new().workers(2).chat_key("history_on_join = 0"),
        None,
    );
    server.wait_ready();
    let addr = server.listen_addr();
    let mut alice = Client::connect(addr, "alice");
    let (nick, _) = alice.expect_welcome();
    server.notify.wait_from(0, LINE_TIMEOUT, "STATUS= with 1 client", |n| {
        n.has("STATUS", "2 workers, 1 clients, generation 1")
    });
    let old = server.workers();
    let before = server.notify.count();
    let t0 = monotonic_usec();
    let out = server.run(&["reload"]);
    let t1 = monotonic_usec();
    assert!(out.status.success(), "chatd reload failed: {}", output_text(&out));

    let (ir, reloading) = server
        .notify
        .wait_from(before, LINE_TIMEOUT, "RELOADING=1", |n| n.get("RELOADING").is_some());
    assert_eq!(reloading.get("RELOADING"), Some("1"), "{:?}", reloading.fields);
    let mono: u64 = reloading
        .get("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC=: {:?}", reloading.fields))
        .parse()
        .expect("MONOTONIC_USEC= is a number");
    assert!(t0 <= mono && mono <= t1, "MONOTONIC_USEC={mono} not within [{t0}, {t1}]");
    // Synchronous: when `chatd reload` has returned, every slot is served by generation 2.
    let new = server.workers();
    assert_eq!(new.len(), 2, "{new:?}");
    for (slot, pid, generation) in &new {
        assert_eq!(*generation, 2, "slot {slot} when `chatd reload` returned: {new:?}");
        assert!(!old.iter().any(|w| w.1 == *pid), "pid {pid} survived the reload: {old:?}");
    }
    let (_, ready) =
        server.notify.wait_from(ir + 1, LINE_TIMEOUT, "READY=1 after RELOADING=1", |n| {
            n.get("READY").is_some()
        });
    assert_eq!(ready.get("READY"), Some("1"), "{:?}", ready.fields);
    server.notify.wait_from(ir + 1, LINE_TIMEOUT, "STATUS= with generation 2", |n| {
        n.has("STATUS", "2 workers, 1 clients, generation 2")
    });
    let between: Vec<Notification> = server.notify.all()[before..].to_vec();
    assert_eq!(
        between.iter().filter(|n| n.get("RELOADING").is_some()).count(),
        1,
        "one RELOADING=1 per reload: {between:#?}"
    );

    alice.send_line("still here");
    alice.expect_chat(&nick, "still here");
}

/// A reload with a broken config changes nothing (docs/control.md, "Reload"): `chatd reload` exits
/// non-zero naming file:line:column, no `RELOADING=1` is sent, the workers stay, and STATUS= gets
/// `; last reload failed: REASON` (docs/control.md, "systemd").
#[test]
fn broken_config_reload_changes_nothing() {
    let server = NotifiedServer::start(ServerBuilder::new().workers(2), None);
    server.wait_ready();
    let old = server.workers();
    let before = server.notify.count();
    let text = fs::read_to_string(&server.config).unwrap();
    assert!(text.starts_with("[server]\n"), "{text}");
    fs::write(&server.config, text.replacen("[server]\n", "[server]\nno_such_key = 1\n", 1))
        .unwrap();
    let out = server.run(&["reload"]);
    let msg = output_text(&out);
    assert!(!out.status.success(), "reload of a broken config succeeded: {msg}");
    let name = server.config.display().to_string();
    assert!(msg.contains(&format!("{name}:2:")), "error does not name file:line:col: {msg}");
    assert!(msg.contains("no_such_key"), "error does not name the key: {msg}");
    let (_, failed) =
        server.notify.wait_from(before, LINE_TIMEOUT, "STATUS= after the failure", |n| {
            n.get("STATUS").is_some_and(|s| s.contains("; last reload failed: "))
        });
    let status = failed.get("STATUS").unwrap();
    assert!(
        status.starts_with("2 workers, 0 clients, generation 1; last reload failed: "),
        "STATUS={status:?}"
    );
    let after = server.notify.all().split_off(before);
    assert!(after.iter().all(|n| n.get("RELOADING").is_none()), "{after:#?}");
    assert_eq!(server.workers(), old);
}

/// `STATUS=` changes as soon as what it shows does, not on the next second's refresh: a reload
/// that fails (an address taken by another process) is in it before `chatd reload` returns, and
/// the `READY=1` ending a 4 → 1 reload counts the one worker left (docs/control.md, "systemd").
#[test]
fn status_follows_reloads_at_once() {
    let server = NotifiedServer::start(ServerBuilder::new().workers(4), None);
    server.wait_ready();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = fs::read_to_string(&server.config).unwrap();
    let broken = text.replacen(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\", \"{}\"]", taken.local_addr().unwrap()),
        1,
    );
    fs::write(&server.config, broken.replacen("workers = 4", "workers = 1", 1)).unwrap();
    let before = server.notify.count();
    let out = server.run(&["reload"]);
    let returned = Instant::now();
    assert!(!out.status.success(), "reload onto a taken address: {}", output_text(&out));
    let (_, failed) = server.notify.wait_from(before, LINE_TIMEOUT, "the failure", |n| {
        n.get("STATUS").is_some_and(|s| s.contains("; last reload failed: "))
    });
    assert!(failed.get("STATUS").unwrap().starts_with("4 workers, 0 clients, generation 1;"));
    // Sent before the answer; the margin covers this test's own receiving thread.
    let late = failed.at.saturating_duration_since(returned);
    assert!(late < Duration::from_millis(250), "STATUS= came {late:?} after the answer");

    fs::write(&server.config, text.replacen("workers = 4", "workers = 1", 1)).unwrap();
    let before = server.notify.count();
    let out = server.run(&["reload"]);
    assert!(out.status.success(), "chatd reload failed: {}", output_text(&out));
    let (_, ready) =
        server.notify.wait_from(before, LINE_TIMEOUT, "READY=1", |n| n.has("READY", "1"));
    assert_eq!(ready.get("STATUS"), Some("1 workers, 0 clients, generation 2"));
}
