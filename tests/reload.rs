//! End-to-end tests of the rolling reload (SPEC §3.1): sessions handed from one worker
//! generation to the next without a disconnect or a lost, duplicated or reordered room line,
//! under load; a broken config changing nothing; a changed worker count; an upgraded binary
//! picked up from disk; the drain path when hand-off is off; SIGHUP; connection attempts while
//! the worker count changes; reloads in a quiet room; a new worker crashing mid-hand-off.
//!
//! Everything runs against the real binary over loopback sockets, and every wait ends on a
//! readiness signal (a line read, a `chatd status --json` answer, a log line) or fails after a
//! deadline.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a `chatd reload` / `chatd status` may take before the test gives up.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for the room to settle after a reload (old workers gone, new ones listed).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A server for room tests: no history on join (a client's first line is its welcome), no rate
/// limit (fast senders are not slowed down).
fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}

// ---------------------------------------------------------------------------------------------
// Control helpers
// ---------------------------------------------------------------------------------------------

/// `chatd status --json`, parsed.
#[derive(Clone, Debug)]
struct Status {
    version: String,
    generation: u64,
    clients: u64,
    listen: Vec<String>,
    /// (slot, pid, generation, clients), sorted by slot then pid.
    workers: Vec<(u64, i32, u64, u64)>,
}

impl Status {
    fn pids(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.workers.iter().map(|w| w.1).collect();
        p.sort_unstable();
        p
    }

    fn slots(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.workers.iter().map(|w| w.0).collect();
        s.sort_unstable();
        s
    }
}

fn parse_status(text: &str) -> Status {
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text:?}"));
    let u = |v: &Value, k: &str| -> u64 {
        v[k].as_u64().unwrap_or_else(|| panic!("status: {k:?} missing or not a number in {v}"))
    };
    let mut workers: Vec<(u64, i32, u64, u64)> = v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status: no workers array in {v}"))
        .iter()
        .map(|w| (u(w, "slot"), u(w, "pid") as i32, u(w, "generation"), u(w, "clients")))
        .collect();
    workers.sort_unstable();
    Status {
        version: v["version"].as_str().expect("status: version").to_string(),
        generation: u(&v, "generation"),
        clients: u(&v, "clients"),
        listen: v["listen"]
            .as_array()
            .expect("status: listen")
            .iter()
            .map(|a| a.as_str().expect("listen entry").to_string())
            .collect(),
        workers,
    }
}

/// Runs `chatd status --json --control SOCKET`; must succeed.
fn status_at(control: &Path) -> Status {
    let out =
        run_chatd(&["status", "--json", "--control", control.to_str().unwrap()], CONTROL_TIMEOUT);
    assert!(out.status.success(), "chatd status failed: {}", output_text(&out));
    parse_status(&String::from_utf8_lossy(&out.stdout))
}

fn status(server: &Server) -> Status {
    status_at(&server.control_socket())
}

fn reload_at(control: &Path) -> Output {
    run_chatd(&["reload", "--control", control.to_str().unwrap()], CONTROL_TIMEOUT)
}

/// `chatd reload` must exit 0 printing exactly `reloaded: generation G, N workers`.
fn expect_reload_ok(out: &Output, generation: u64, workers: usize) {
    assert!(out.status.success(), "chatd reload failed: {}", output_text(out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!("reloaded: generation {generation}, {workers} workers"),
        "chatd reload output; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the server runs exactly `n` workers, all of `generation`, none of them in
/// `old`, with slots 0..n, and `/proc` shows exactly those pids as the supervisor's worker
/// children (the previous generation has exited). Returns that status.
fn wait_settled(control: &Path, supervisor: i32, n: usize, generation: u64, old: &[i32]) -> Status {
    let mut last = None;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let st = status_at(control);
        let ok = st.generation == generation
            && st.workers.len() == n
            && st.workers.iter().all(|w| w.2 == generation && !old.contains(&w.1))
            && st.slots() == (0..n as u64).collect::<Vec<_>>()
            && worker_children(supervisor) == st.pids();
        if ok {
            return st;
        }
        if Instant::now() >= deadline {
            panic!(
                "after {SETTLE_TIMEOUT:?}: expected {n} workers of generation {generation} \
                 (none of {old:?}); status: {st:?}; /proc workers: {:?}; previous: {last:?}",
                worker_children(supervisor)
            );
        }
        last = Some(st);
        thread::sleep(Duration::from_millis(50));
    }
}

/// The `reload to generation G done in Xs` log line's X, in seconds.
fn reload_duration(server: &Server, generation: u64) -> f64 {
    let pat = format!("reload to generation {generation} done in ");
    let line = server.wait_for_log(&pat, LINE_TIMEOUT);
    let rest = &line[line.find(&pat).unwrap() + pat.len()..];
    rest.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("bad log line {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// Small-room helpers (a few dozen blocking clients)
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Room {
    clients: Vec<Client>,
    nicks: Vec<String>,
}

impl Room {
    /// Connects `n` clients one after the other; everyone already in reads each join notice.
    fn join(&mut self, server: &Server, n: usize, label: &str) {
        for _ in 0..n {
            self.join_at(server.addr(), label);
        }
    }

    fn join_at(&mut self, addr: SocketAddr, label: &str) -> usize {
        let i = self.clients.len();
        let mut c = Client::connect(addr, &format!("{label}{i}"));
        let (nick, count) = c.expect_welcome();
        assert_eq!(count, i + 1, "{nick}: online count in the welcome line");
        let notice = format!("* {nick} joined ({} online)", i + 1);
        for other in &mut self.clients {
            other.expect_line(&notice);
        }
        self.clients.push(c);
        self.nicks.push(nick);
        i
    }

    /// `from` says `text`; every client's very next line must be that chat line.
    fn chat(&mut self, from: usize, text: &str) {
        self.clients[from].send_line(text);
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
    }

    fn ports(&self) -> Vec<u16> {
        self.clients.iter().map(Client::local_port).collect()
    }

    /// Every client's connection is held by one of `pids`; returns the owner of each.
    fn owners(&self, server_port: u16, pids: &[i32]) -> Vec<i32> {
        let owners = workers_of(&self.ports(), server_port, pids);
        owners
            .iter()
            .zip(&self.nicks)
            .map(|(o, nick)| {
                o.unwrap_or_else(|| panic!("none of the workers {pids:?} holds {nick}'s socket"))
            })
            .collect()
    }

    /// No client has anything to read (nothing unexpected arrived, nobody was disconnected):
    /// a round trip proves it — `probe` says something and it must be everyone's next line.
    fn quiet_check(&mut self, probe: usize, text: &str) {
        self.chat(probe, text);
    }
}

// ---------------------------------------------------------------------------------------------
// A fleet of many clients read by a few poll(2) threads
// ---------------------------------------------------------------------------------------------

/// Reader threads (each client belongs to one, `index % READERS`).
const READERS: usize = 4;

/// What one fleet client has seen, classified as it arrives (nothing else is kept, so a
/// thousand clients reading thousands of lines stay cheap).
#[derive(Default)]
struct Tally {
    /// `u<i>` for the original clients, which rename themselves; `None` for late joiners.
    want_nick: Option<String>,
    /// From the welcome line.
    nick: Option<String>,
    /// Read `* guest-N is now known as u<i>` for itself.
    renamed: bool,
    /// Read `* you are already u<i>` (its nick survived the reloads).
    already: bool,
    /// The load chat lines, in arrival order, as `sender << 20 | counter`.
    chats: Vec<u32>,
    /// `final` marker lines read.
    finals: usize,
    /// How the connection ended, if it did.
    closed: Option<String>,
    /// Lines that have no business arriving (kept up to a few).
    unexpected: Vec<String>,
    unexpected_count: usize,
}

impl Tally {
    fn odd(&mut self, why: &str, line: &str) {
        self.unexpected_count += 1;
        if self.unexpected.len() < 5 {
            self.unexpected.push(format!("{why}: {line:?}"));
        }
    }

    /// Classifies one line; see the rules in the test's doc comment.
    fn line(&mut self, line: &str) {
        let Some(nick) = self.nick.clone() else {
            match parse_welcome(line) {
                Some((n, _)) => self.nick = Some(n),
                None => self.odd("first line is not a welcome", line),
            }
            return;
        };
        if let Some(c) = parse_chat(line) {
            if let Some(rest) = c.text.strip_prefix("m ") {
                let parsed = rest
                    .split_once(' ')
                    .and_then(|(s, n)| Some((s.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
                match parsed {
                    Some((s, n)) if c.nick == format!("u{s}") && s < 1024 && n < (1 << 20) => {
                        self.chats.push(s << 20 | n)
                    }
                    _ => self.odd("bad load line", line),
                }
            } else if let Some(j) = c.text.strip_prefix("final ") {
                if c.nick == format!("u{j}") {
                    self.finals += 1;
                } else {
                    self.odd("final marker under the wrong nick", line);
                }
            } else {
                self.odd("unknown chat line", line);
            }
            return;
        }
        if let Some(want) = &self.want_nick {
            if line == format!("* {nick} is now known as {want}") {
                self.renamed = true;
                return;
            }
            if line == format!("* you are already {want}") {
                self.already = true;
                return;
            }
        }
        if let Some(rest) = line.strip_prefix("* ") {
            // Other clients' renames (guest-N → uI) and joins of guests are room noise.
            if let Some((from, to)) = rest.split_once(" is now known as ") {
                if from.starts_with("guest-") && to.starts_with('u') {
                    return;
                }
            }
            if let Some((who, _)) = rest.split_once(" joined (") {
                if who.starts_with("guest-") && rest.ends_with(" online)") {
                    return;
                }
            }
        }
        // Leaves, notices about restarts, errors, anything else: nobody leaves in this test.
        self.odd("unexpected line", line);
    }
}

/// One reader thread's clients' tallies: client `i` is entry `i / READERS` of shard
/// `i % READERS`, so a reader never contends with the other readers, only with the main thread.
type Shard = Arc<Mutex<Vec<Tally>>>;

type Inbox = Arc<Mutex<Vec<(usize, TcpStream, Vec<u8>)>>>;

struct Fleet {
    shards: Vec<Shard>,
    inboxes: Vec<Inbox>,
    /// Write handles by client index; its lock also serialises `add`.
    writers: Mutex<Vec<TcpStream>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Fleet {
    fn new() -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut shards, mut inboxes, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..READERS {
            let shard: Shard = Arc::new(Mutex::new(Vec::new()));
            let inbox: Inbox = Arc::new(Mutex::new(Vec::new()));
            shards.push(Arc::clone(&shard));
            inboxes.push(Arc::clone(&inbox));
            let stop = Arc::clone(&stop);
            threads.push(
                thread::Builder::new()
                    .name(format!("fleet-reader-{r}"))
                    .spawn(move || fleet_reader(shard, inbox, stop))
                    .expect("spawn reader"),
            );
        }
        Fleet { shards, inboxes, writers: Mutex::new(Vec::new()), stop, threads }
    }

    /// Adds a connected client; `leftover` is what was already read past its welcome line
    /// (`nick` set) or nothing (welcome still to come). Returns its index.
    fn add(
        &self,
        stream: TcpStream,
        want_nick: Option<String>,
        nick: Option<String>,
        leftover: Vec<u8>,
    ) -> usize {
        // Reads only happen after poll says readable; the timeout is a safety net.
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        stream.set_write_timeout(Some(LINE_TIMEOUT)).expect("write timeout");
        let writer = stream.try_clone().expect("clone");
        let mut writers = self.writers.lock().unwrap();
        let index = writers.len();
        writers.push(writer);
        let mut shard = self.shards[index % READERS].lock().unwrap();
        assert_eq!(shard.len(), index / READERS);
        shard.push(Tally { want_nick, nick, ..Tally::default() });
        drop(shard);
        self.inboxes[index % READERS].lock().unwrap().push((index, stream, leftover));
        index
    }

    fn send(&self, index: usize, line: &str) -> io::Result<()> {
        let mut w = self.writers.lock().unwrap()[index].try_clone()?;
        w.write_all(format!("{line}\n").as_bytes())
    }

    fn writer(&self, index: usize) -> TcpStream {
        self.writers.lock().unwrap()[index].try_clone().expect("clone")
    }

    /// Runs `f` on every client's tally, in index order (all shards locked meanwhile).
    fn with<T>(&self, f: impl FnOnce(&[&Tally]) -> T) -> T {
        let guards: Vec<_> = self.shards.iter().map(|s| s.lock().unwrap()).collect();
        let n: usize = guards.iter().map(|g| g.len()).sum();
        let all: Vec<&Tally> = (0..n).map(|i| &guards[i % READERS][i / READERS]).collect();
        f(&all)
    }

    /// Polls until `pred` holds on the tallies; panics with `what` and a summary on timeout.
    fn wait(&self, timeout: Duration, what: &str, mut pred: impl FnMut(&[&Tally]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with(&mut pred) {
                return;
            }
            if Instant::now() >= deadline {
                let (closed, odd) = self.with(|t| {
                    let closed: Vec<String> = t
                        .iter()
                        .enumerate()
                        .filter_map(|(i, x)| x.closed.as_ref().map(|c| format!("#{i}: {c}")))
                        .take(10)
                        .collect();
                    let odd: Vec<String> = t
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| !x.unexpected.is_empty())
                        .map(|(i, x)| format!("#{i}: {:?}", x.unexpected))
                        .take(10)
                        .collect();
                    (closed, odd)
                });
                panic!(
                    "timed out after {timeout:?} waiting for {what}; closed: {closed:?}; \
                     unexpected lines: {odd:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Seen {
    Line(String),
    Bad(String),
    Closed(String),
}

fn fleet_reader(shard: Shard, inbox: Inbox, stop: Arc<AtomicBool>) {
    let mut conns: Vec<(usize, TcpStream, Vec<u8>)> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut seen: Vec<(usize, Seen)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fresh = std::mem::take(&mut *inbox.lock().unwrap());
        // Bytes read together with a welcome line (by the connect loop) come first.
        for (index, _, buf) in &mut fresh {
            split_lines(*index, buf, &mut seen);
        }
        conns.append(&mut fresh);
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|(_, s, _)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        let mut dead = Vec::new();
        if n > 0 {
            for (k, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                let (index, stream, buf) = &mut conns[k];
                match stream.read(&mut chunk) {
                    Ok(0) => {
                        let how = if buf.is_empty() {
                            "EOF".to_string()
                        } else {
                            format!("EOF after {:?}", String::from_utf8_lossy(buf))
                        };
                        seen.push((*index, Seen::Closed(how)));
                        dead.push(k);
                    }
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        split_lines(*index, buf, &mut seen);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        seen.push((*index, Seen::Closed(format!("error: {e}"))));
                        dead.push(k);
                    }
                }
            }
        }
        for k in dead.into_iter().rev() {
            conns.swap_remove(k);
        }
        if !seen.is_empty() {
            let mut t = shard.lock().unwrap();
            for (index, s) in seen.drain(..) {
                let tally = &mut t[index / READERS];
                match s {
                    Seen::Line(l) => tally.line(&l),
                    Seen::Bad(l) => tally.odd("line without CRLF or not UTF-8", &l),
                    Seen::Closed(how) => tally.closed = Some(how),
                }
            }
        }
    }
}

fn split_lines(index: usize, buf: &mut Vec<u8>, seen: &mut Vec<(usize, Seen)>) {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let raw = &buf[start..start + pos];
        start += pos + 1;
        seen.push((
            index,
            match raw.strip_suffix(b"\r").map(std::str::from_utf8) {
                Some(Ok(l)) => Seen::Line(l.to_string()),
                _ => Seen::Bad(String::from_utf8_lossy(raw).into_owned()),
            },
        ));
    }
    buf.drain(..start);
}

/// Connects and reads the welcome line within the deadlines; returns the stream, the nick and
/// any bytes read past the welcome.
fn connect_welcomed(addr: SocketAddr) -> Result<(TcpStream, String, Vec<u8>), String> {
    let stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut s = &stream;
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let rest = buf[pos + 1..].to_vec();
            let line =
                line.strip_suffix('\r').ok_or_else(|| format!("no CRLF on {line:?}"))?.to_string();
            let (nick, _) =
                parse_welcome(&line).ok_or_else(|| format!("not a welcome: {line:?}"))?;
            return Ok((stream, nick, rest));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no welcome within {LINE_TIMEOUT:?} (read {buf:?})"));
        }
        stream.set_read_timeout(Some(deadline - now)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("EOF before the welcome (read {buf:?})")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read before the welcome: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Reload under load
// ---------------------------------------------------------------------------------------------

/// Sets the flags when dropped (also while unwinding).
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// 1,000 renamed clients, 20 of them chatting every 50 ms (half of them writing each line in
/// two parts a round apart, so an unfinished input line is always in the server when a session
/// moves), a loop opening new connections throughout, and 5 reloads in a row. Every original client must end with exactly the same
/// sequence of chat lines — every line sent, once, in one order — under unchanged nicks;
/// nobody is disconnected, no connection attempt fails, and every reload replaces every
/// worker.
///
/// Per client, lines are classified as they arrive (see [`Tally::line`]): its welcome, its
/// own rename, other guests' renames and joins, load lines `<uS> m S N`, `<uJ> final J`, and
/// `* you are already uI`. Anything else — a leave, a restart notice, an error — is counted
/// as unexpected and fails the test.
#[test]
fn reload_under_load_loses_nothing() {
    const ORIGINALS: usize = 1000;
    const SENDERS: usize = 20;
    const SEND_EVERY: Duration = Duration::from_millis(50);
    /// Load lines sent but not yet read by client 0 before the senders pause.
    const MAX_IN_FLIGHT: usize = 10 * SENDERS;
    const CONNECT_EVERY: Duration = Duration::from_millis(50);
    const RELOADS: u64 = 5;
    const WAIT: Duration = Duration::from_secs(120);

    let test_start = Instant::now();
    let server = room_server(4).start();
    let control = server.control_socket();
    let addr = server.addr();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);

    let fleet = Fleet::new();
    for i in 0..ORIGINALS {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
        fleet.add(stream, Some(format!("u{i}")), None, Vec::new());
    }
    fleet.wait(WAIT, "every original client's welcome", |t| t.iter().all(|x| x.nick.is_some()));
    for i in 0..ORIGINALS {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick");
    }
    fleet.wait(WAIT, "every original client's own rename", |t| t.iter().all(|x| x.renamed));
    let connected_at = test_start.elapsed();

    let stop_senders = AtomicBool::new(false);
    let stop_connecting = AtomicBool::new(false);
    let reloading = AtomicBool::new(false);
    let mut reload_times = Vec::new();
    let (sent, connects) = thread::scope(|scope| {
        // If the main thread panics, the scope waits for these threads: stop them first.
        let _stop = StopOnDrop(&[&stop_senders, &stop_connecting]);
        let senders = scope.spawn(|| {
            let mut ws: Vec<TcpStream> = (0..SENDERS).map(|s| fleet.writer(s)).collect();
            let mut counts = vec![0u32; SENDERS];
            let mut total = 0usize;
            let mut started = false;
            for w in &ws {
                w.set_nodelay(true).expect("nodelay");
            }
            let mut next = Instant::now();
            while !stop_senders.load(Ordering::SeqCst) {
                // Back-pressure: on a busy machine, wait rather than pile up an ever longer
                // backlog (client 0 stands for the room: everyone gets the same lines).
                while total > MAX_IN_FLIGHT + fleet.with(|t| t[0].chats.len())
                    && !stop_senders.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(5));
                    next = Instant::now();
                }
                for (s, w) in ws.iter_mut().enumerate() {
                    // Odd senders split every line over two writes a round apart, so the
                    // server always holds an unfinished line of theirs — also when it hands
                    // the session over. The line's end completes it the next round.
                    let data = if s % 2 == 1 {
                        let tail = if started { format!("{}\n", counts[s]) } else { String::new() };
                        format!("{tail}m {s} ")
                    } else {
                        format!("m {s} {}\n", counts[s])
                    };
                    w.write_all(data.as_bytes()).unwrap_or_else(|e| panic!("sender u{s}: {e}"));
                    if s % 2 == 0 || started {
                        counts[s] += 1;
                        total += 1;
                    }
                }
                started = true;
                // Pacing, not synchronisation.
                next += SEND_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for (s, w) in ws.iter_mut().enumerate().filter(|(s, _)| s % 2 == 1 && started) {
                w.write_all(format!("{}\n", counts[s]).as_bytes()).expect("last line end");
                counts[s] += 1;
            }
            counts
        });
        let connector = scope.spawn(|| {
            // (ok, failures, attempts that overlapped a reload)
            let (mut ok, mut failures, mut during) = (0usize, Vec::new(), 0usize);
            let mut next = Instant::now();
            while !stop_connecting.load(Ordering::SeqCst) {
                let overlapping = reloading.load(Ordering::SeqCst);
                match connect_welcomed(addr) {
                    Ok((stream, nick, rest)) => {
                        fleet.add(stream, None, Some(nick), rest);
                        ok += 1;
                    }
                    Err(e) => failures.push(e),
                }
                if overlapping || reloading.load(Ordering::SeqCst) {
                    during += 1;
                }
                next += CONNECT_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (ok, failures, during)
        });

        // Load is flowing: the first client has read some load lines from every sender.
        let flowing = |fleet: &Fleet, at_least: usize| {
            fleet.wait(WAIT, &format!("{at_least} load lines at client 0"), |t| {
                t[0].chats.len() >= at_least
            })
        };
        flowing(&fleet, 2 * SENDERS);
        for r in 1..=RELOADS {
            let before = st.clone();
            let generation = before.generation + 1;
            reloading.store(true, Ordering::SeqCst);
            let t0 = Instant::now();
            let out = reload_at(&control);
            let took = t0.elapsed();
            reloading.store(false, Ordering::SeqCst);
            expect_reload_ok(&out, generation, 4);
            st = wait_settled(&control, server.pid(), 4, generation, &before.pids());
            let logged = reload_duration(&server, generation);
            eprintln!(
                "reload {r}: `chatd reload` {:.3}s, logged {logged:.3}s, workers {:?} -> {:?}",
                took.as_secs_f64(),
                before.pids(),
                st.pids()
            );
            reload_times.push((took, logged));
            // More traffic after each reload before the next one.
            let now = fleet.with(|t| t[0].chats.len());
            flowing(&fleet, now + 2 * SENDERS);
        }
        stop_connecting.store(true, Ordering::SeqCst);
        let connects = connector.join().expect("connect loop");
        stop_senders.store(true, Ordering::SeqCst);
        let sent = senders.join().expect("senders");
        (sent, connects)
    });
    let (connected_ok, failures, overlapping) = connects;

    // Every original client still holds its nick: `/nick u<i>` is answered `already`.
    for i in 0..ORIGINALS {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick after reloads");
    }
    fleet.wait(WAIT, "`* you are already u<i>` at every original client", |t| {
        t.iter().take(ORIGINALS).all(|x| x.already)
    });
    // A final marker, numbered after every load line: once everyone has it, all is delivered.
    let last = ORIGINALS - 1;
    fleet.send(last, &format!("final {last}")).expect("send final");
    let total_clients = fleet.with(|t| t.len());
    fleet.wait(WAIT, "the final marker at every client", |t| t.iter().all(|x| x.finals >= 1));
    let end_status = status_at(&control);

    // ----- verdict ------------------------------------------------------------------------
    assert!(failures.is_empty(), "{} connection attempts failed: {failures:?}", failures.len());
    assert!(connected_ok > 0, "the connect loop never connected");
    assert!(
        overlapping > 0,
        "no connection attempt overlapped a reload ({connected_ok} attempts); test ineffective"
    );
    fleet.with(|t| {
        for (i, x) in t.iter().enumerate() {
            let who = format!("client #{i} ({:?}, then {:?})", x.nick, x.want_nick);
            assert!(x.closed.is_none(), "{who} disconnected: {:?}", x.closed);
            assert!(
                x.unexpected_count == 0,
                "{who} read {} unexpected lines, e.g. {:?}",
                x.unexpected_count,
                x.unexpected
            );
            assert_eq!(x.finals, 1, "{who}: final marker count");
        }
        // The reference order: client 0's. Each sender's lines exactly once, in send order.
        let reference = &t[0].chats;
        let mut next = vec![0u32; SENDERS];
        for &m in reference {
            let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
            assert!(s < SENDERS, "load line from unknown sender {s}");
            assert_eq!(
                n,
                next[s],
                "client 0: after line {} of sender u{s}, line {n}: lost, repeated or reordered",
                next[s] as i64 - 1
            );
            next[s] += 1;
        }
        assert_eq!(next, sent, "client 0: load lines received per sender vs sent");
        for (i, x) in t.iter().enumerate().take(ORIGINALS).skip(1) {
            if x.chats != *reference {
                let at = x.chats.iter().zip(reference).position(|(a, b)| a != b);
                panic!(
                    "client {i} (u{i}) read {} load lines, client 0 read {}; first difference \
                     at #{at:?}",
                    x.chats.len(),
                    reference.len()
                );
            }
        }
        // Late joiners (connected during the load and the reloads): a suffix of the same order.
        for (i, x) in t.iter().enumerate().skip(ORIGINALS) {
            let tail = &reference[reference.len() - x.chats.len().min(reference.len())..];
            assert!(
                x.chats.len() <= reference.len() && x.chats == tail,
                "late client #{i} ({:?}): its {} load lines are not the last {} of the room's",
                x.nick,
                x.chats.len(),
                x.chats.len()
            );
        }
    });
    assert_eq!(end_status.clients as usize, total_clients, "status clients: {end_status:?}");
    assert_eq!(end_status.generation, 1 + RELOADS);
    let total_sent: u32 = sent.iter().sum();
    eprintln!(
        "{ORIGINALS} clients connected and renamed in {:.1}s; {total_sent} load lines sent; \
         {connected_ok} connections during the run ({overlapping} overlapping a reload); \
         reloads (command s, logged s): {:?}; total {:.1}s",
        connected_at.as_secs_f64(),
        reload_times.iter().map(|(a, b)| (a.as_secs_f64(), *b)).collect::<Vec<_>>(),
        test_start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Broken config
// ---------------------------------------------------------------------------------------------

/// A reload with a broken config fails with the error's file:line:column and changes nothing:
/// same worker pids, same generation, the room goes on; a fixed config then reloads.
#[test]
fn broken_config_reload_changes_nothing() {
    let builder = room_server(4);
    let server = builder.clone().start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 6, "c");
    room.chat(0, "before");

    let path = server.config_path().display().to_string();
    let good = builder.render(&control);
    // (config text, the offending line, its column if the contract pins it, the message).
    let cases = [
        (
            builder.clone().server_key("bogus = 1").render(&control),
            "bogus = 1",
            Some(1),
            "unknown key 'bogus'",
        ),
        (
            builder.clone().workers(0).render(&control),
            "workers = 0",
            Some(11),
            "server.workers: expected an integer from 1 to 1024",
        ),
        (format!("{good}\n[chat\n"), "[chat", None, "invalid TOML"),
    ];
    for (n, (text, bad_line, column, message)) in cases.iter().enumerate() {
        let line = text.lines().position(|l| l == *bad_line).expect("bad line in config") + 1;
        fs::write(server.config_path(), text).expect("write config");
        let out = server.run(&["reload"], CONTROL_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "reload of a broken config succeeded: {}",
            output_text(&out)
        );
        assert!(out.stdout.is_empty(), "stdout of a failed reload: {}", output_text(&out));
        let prefix = format!("{path}:{line}:");
        let at = stderr
            .find(&prefix)
            .unwrap_or_else(|| panic!("case {n}: stderr does not name {prefix}COL: {stderr:?}"));
        let after = &stderr[at + prefix.len()..];
        let (col, rest) = after.split_once(": ").expect("file:line:col: message");
        let col: u32 = col.parse().unwrap_or_else(|_| panic!("case {n}: column in {stderr:?}"));
        assert!(col >= 1 && column.is_none_or(|c| c == col), "case {n}: column in {stderr:?}");
        assert!(rest.starts_with(message), "case {n}: message {rest:?}, expected {message:?}");
        server.wait_for_log_count("reload failed, keeping the running config", n + 1, LINE_TIMEOUT);

        let now = status(&server);
        assert_eq!(now.generation, 1, "generation changed by a failed reload: {now:?}");
        assert_eq!(now.pids(), st.pids(), "workers changed by a failed reload");
        assert_eq!(worker_children(server.pid()), st.pids(), "/proc workers changed");
        assert_eq!(now.clients, room.clients.len() as u64);
        room.chat(n % room.clients.len(), &format!("still here {n}"));
    }
    // Someone new can still join, and the room still talks.
    room.join(&server, 1, "late");
    room.chat(6, "after the failed reloads");
    assert!(!server.log_contains("reload to generation"), "a failed reload rolled workers");

    // Fixed: the next reload works.
    fs::write(server.config_path(), good).expect("write config");
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    expect_reload_ok(&out, 2, 4);
    wait_settled(&control, server.pid(), 4, 2, &st.pids());
    room.chat(3, "after the good reload");
}

// ---------------------------------------------------------------------------------------------
// 3. Worker count
// ---------------------------------------------------------------------------------------------

/// 4 → 2 → 3 workers with 30 clients: exactly that many workers afterwards (status and
/// `/proc`), every session held by one of them, nobody disconnected or told anything, one
/// message reaches everyone; the listening sockets follow the slot count.
#[test]
fn reload_changes_worker_count() {
    let server = room_server(4).start();
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 30, "c");
    let owners = room.owners(server.port(), &st.pids());
    assert!(
        owners.iter().collect::<HashSet<_>>().len() >= 3,
        "30 clients on fewer than 3 of 4 workers: {owners:?}"
    );
    assert_eq!(listening_sockets(server.addr()), 4);

    for (step, workers) in [2usize, 3].into_iter().enumerate() {
        let generation = 2 + step as u64;
        fs::write(server.config_path(), room_server(workers).render(&control)).expect("config");
        let out = server.run(&["reload"], CONTROL_TIMEOUT);
        expect_reload_ok(&out, generation, workers);
        let before = st.pids();
        st = wait_settled(&control, server.pid(), workers, generation, &before);
        let n = room.clients.len() as u64;
        assert_eq!(st.clients, n, "{st:?}");
        assert_eq!(
            st.workers.iter().map(|w| w.3).sum::<u64>(),
            n,
            "clients per worker in status: {st:?}"
        );
        assert_eq!(st.listen, vec![server.addr().to_string()]);
        let owners = room.owners(server.port(), &st.pids());
        let mut per: HashMap<i32, usize> = HashMap::new();
        for o in &owners {
            *per.entry(*o).or_default() += 1;
        }
        for w in &st.workers {
            assert_eq!(
                per.get(&w.1).copied().unwrap_or(0) as u64,
                w.3,
                "worker {} serves a different number of clients than status says",
                w.1
            );
        }
        wait_until(SETTLE_TIMEOUT, &format!("{workers} listening sockets"), || {
            (listening_sockets(server.addr()) == workers).then_some(())
        });
        // Nobody read anything (no leave, no notice): the probe is everyone's next line.
        room.quiet_check(step * 7, &format!("after {workers} workers"));
        // The new worker set accepts.
        room.join(&server, 1, "new");
        room.chat(room.clients.len() - 1, "hello from the newcomer");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Binary upgrade
// ---------------------------------------------------------------------------------------------

/// A supervisor started from a binary of our own, so the test can replace that file.
struct OwnServer {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl OwnServer {
    fn start(exe: &Path, config: &Path) -> OwnServer {
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(var);
        }
        let mut child = spawn_retrying(&mut cmd);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let l = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some((addr, _)) = parse_listen_line(&line) {
                    let _ = tx.send(addr);
                }
                l.lock().unwrap().push(line);
            }
        });
        let mut server = OwnServer { child, log, addr: "0.0.0.0:0".parse().unwrap() };
        server.addr = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|e| {
            panic!("no `listening on` line ({e}); log: {:?}", server.log.lock().unwrap())
        });
        server
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let sup = Pid::from_raw(self.pid());
        let _ = kill(sup, Signal::SIGSTOP);
        for pid in descendants(self.pid()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = killpg(sup, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("----- chatd log -----");
            for l in self.log.lock().unwrap().iter() {
                eprintln!("{l}");
            }
            eprintln!("----- end of chatd log -----");
        }
    }
}

/// Spawns `cmd`, retrying on ETXTBSY: the binary was just written by this process, and
/// another test thread's fork may briefly hold a copy of the (close-on-exec) write descriptor.
fn spawn_retrying(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
        }
    }
}

fn exe_inode(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"))
        .ino()
}

/// The supervisor runs `DIR/bin/chatd`; the file is replaced (write a new file, rename over it)
/// by a different binary; a reload starts every new worker from the new file, while the
/// supervisor itself keeps running the old, now deleted, one. Sessions survive.
#[test]
fn binary_upgrade_on_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let exe = bin.join("chatd");
    fs::copy(CHATD, &exe).expect("copy chatd");
    let control = dir.path().join("control.sock");
    let config = dir.path().join("chatd.toml");
    fs::write(&config, room_server(3).render(&control)).unwrap();

    let server = OwnServer::start(&exe, &config);
    let st = wait_settled(&control, server.pid(), 3, 1, &[]);
    let old_ino = fs::metadata(&exe).unwrap().ino();
    assert_eq!(exe_inode(server.pid()), old_ino, "the supervisor runs DIR/bin/chatd");
    for &pid in &st.pids() {
        assert_eq!(exe_inode(pid), old_ino, "worker {pid} runs DIR/bin/chatd");
    }
    let mut room = Room::default();
    for _ in 0..8 {
        room.join_at(server.addr, "c");
    }
    room.chat(0, "before the upgrade");

    // The "new version": same code, different bytes (an ELF file runs with trailing bytes).
    let staged = bin.join(".chatd.new");
    let mut bytes = fs::read(&exe).unwrap();
    let old_len = bytes.len();
    bytes.extend_from_slice(b"\0chatd upgrade marker\0");
    fs::write(&staged, &bytes).unwrap();
    fs::set_permissions(&staged, fs::metadata(&exe).unwrap().permissions()).unwrap();
    fs::rename(&staged, &exe).expect("rename the new binary over the old");
    let new_meta = fs::metadata(&exe).unwrap();
    let new_ino = new_meta.ino();
    assert_ne!(new_ino, old_ino);
    assert_eq!(new_meta.len() as usize, old_len + 22);
    let mut v = Command::new(&exe);
    v.arg("--version").stdout(Stdio::piped());
    let version = spawn_retrying(&mut v).wait_with_output().expect("new binary runs");
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), "chatd 0.1.0");

    let out = reload_at(&control);
    expect_reload_ok(&out, 2, 3);
    let after = wait_settled(&control, server.pid(), 3, 2, &st.pids());
    for &pid in &after.pids() {
        assert_eq!(exe_inode(pid), new_ino, "new worker {pid} does not run the new binary");
        let link = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(link, exe, "worker {pid}'s exe");
    }
    // The supervisor was not re-executed: it still runs the old file, now unlinked.
    assert_eq!(exe_inode(server.pid()), old_ino);
    let sup_link = fs::read_link(format!("/proc/{}/exe", server.pid())).unwrap();
    assert!(
        sup_link.to_string_lossy().ends_with(" (deleted)"),
        "supervisor exe link: {sup_link:?}"
    );
    assert_eq!(after.version, "0.1.0");

    // Sessions survived, served by the new binary's workers.
    let owners = room.owners(server.addr.port(), &after.pids());
    assert_eq!(owners.len(), 8);
    room.quiet_check(5, "after the upgrade");
    room.join_at(server.addr, "new");
    room.chat(8, "newcomer on the new binary");
}

// ---------------------------------------------------------------------------------------------
// 5. Drain when hand-off is off
// ---------------------------------------------------------------------------------------------

/// With `reload.handoff = false` the old workers drain: `chatd reload` returns once the new
/// generation serves; the old clients keep chatting with everyone (a newcomer on a new worker
/// included) until `drain_timeout`, then read `* server restarting, please reconnect` and EOF,
/// and the room sees them leave `(server restarting)`.
#[test]
fn handoff_off_drains() {
    // Long enough that the chat below surely happens before it ends, even on a busy machine.
    const DRAIN: Duration = Duration::from_secs(3);
    let server = room_server(4).raw("[reload]\nhandoff = false\ndrain_timeout = \"3s\"").start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 3, "old");
    let old_owners = room.owners(server.port(), &st.pids());

    let t0 = Instant::now();
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    let returned = t0.elapsed();
    expect_reload_ok(&out, 2, 4);
    assert!(returned < DRAIN, "`chatd reload` waited for the drain ({returned:?})");
    let now = status(&server);
    assert_eq!(now.generation, 2);
    let new_pids: Vec<i32> =
        now.workers.iter().filter(|w| w.2 == 2).map(|w| w.1).collect::<Vec<_>>();
    assert_eq!(new_pids.len(), 4, "new generation in status: {now:?}");
    assert!(new_pids.iter().all(|p| !st.pids().contains(p)), "{now:?}");

    // A newcomer lands on a new worker; the old clients are still on their old ones.
    let c = room.join_at(server.addr(), "new");
    let owner = room.owners(server.port(), &[st.pids(), new_pids.clone()].concat());
    assert!(new_pids.contains(&owner[c]), "newcomer served by {} not a new worker", owner[c]);
    assert_eq!(&owner[..3], &old_owners[..], "old clients moved although hand-off is off");
    room.chat(0, "old client speaking while draining");
    room.chat(c, "newcomer speaking");
    let drained_by = t0.elapsed();
    assert!(drained_by < DRAIN, "too slow to chat within the drain window ({drained_by:?})");

    let nicks = room.nicks.clone();
    let left: Vec<String> =
        (0..3).map(|i| format!("* {} left (server restarting)", nicks[i])).collect();
    for i in 0..3 {
        // Old workers drain one after the other: a client may first see other old clients
        // leave (never itself), then its own notice, then EOF.
        let notice = "* server restarting, please reconnect";
        let others: Vec<&String> =
            left.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| l).collect();
        let client = &mut room.clients[i];
        match client.read_until(LINE_TIMEOUT, |l| !others.iter().any(|o| *o == l)) {
            Ok(l) if l == notice => {}
            other => panic!(
                "old client {i}: expected {notice:?} (after others' leaves), got {other:?}; \
                 transcript {:?}",
                client.transcript()
            ),
        }
        let at = t0.elapsed();
        assert!(
            at >= DRAIN - Duration::from_millis(50),
            "old client {i} told to reconnect {at:?} after the reload began (drain {DRAIN:?})"
        );
        client.expect_eof();
    }
    let newcomer = &mut room.clients[c];
    let mut got: Vec<String> = (0..3).map(|_| newcomer.next_line()).collect();
    got.sort();
    let mut left = left;
    left.sort();
    assert_eq!(got, left, "what the newcomer saw of the drain");
    // The old workers are gone; the new ones keep serving.
    wait_settled(&control, server.pid(), 4, 2, &st.pids());
    newcomer.send_line("alone now");
    newcomer.expect_chat(&nicks[c], "alone now");
    assert_eq!(status(&server).clients, 1);
}

// ---------------------------------------------------------------------------------------------
// 6. SIGHUP
// ---------------------------------------------------------------------------------------------

/// SIGHUP to the supervisor reloads: generation 2, every worker replaced, clients stay.
#[test]
fn sighup_reloads() {
    let server = room_server(3).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 3, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 5, "c");

    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload to generation 2 done", SETTLE_TIMEOUT);
    let after = wait_settled(&control, server.pid(), 3, 2, &st.pids());
    assert_eq!(after.clients, 5);
    let owners = room.owners(server.port(), &after.pids());
    assert_eq!(owners.len(), 5);
    room.quiet_check(2, "after SIGHUP");

    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload to generation 3 done", SETTLE_TIMEOUT);
    wait_settled(&control, server.pid(), 3, 3, &after.pids());
    room.quiet_check(4, "after the second SIGHUP");
}

// ---------------------------------------------------------------------------------------------
// 7. Connection attempts while the worker count changes
// ---------------------------------------------------------------------------------------------

/// Is `net.ipv4.tcp_migrate_req` on in this network namespace?
fn tcp_migrate_req() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|s| s.trim() == "1")
}

/// A loop connecting (and reading each welcome) as fast as it can while the worker count goes
/// 4 → 2 → 4 → 2 → 4. Growing never closes a listener, so every attempt during a grow must
/// succeed. Shrinking closes the removed slots' listeners; SPEC §1 relies on
/// `net.ipv4.tcp_migrate_req = 1` to move what is still queued on them, so attempts during a
/// shrink must all succeed only where that is set (otherwise the failures are reported).
#[test]
fn connection_attempts_during_worker_count_changes() {
    let server = room_server(4).start();
    let control = server.control_socket();
    let addr = server.addr();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let stop = AtomicBool::new(false);
    // Which reload is running (until the old workers are gone): 0 none, else 1 + index into
    // `counts`.
    let phase = std::sync::atomic::AtomicUsize::new(0);
    let counts = [2usize, 4, 2, 4];
    let (ok, failures) = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop]);
        let connector = scope.spawn(|| {
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let during = phase.load(Ordering::SeqCst);
                match connect_welcomed(addr) {
                    // Dropped at once: the room sees it leave; nobody here minds.
                    Ok(_) => ok += 1,
                    Err(e) => failures.push((during.max(phase.load(Ordering::SeqCst)), e)),
                }
            }
            (ok, failures)
        });
        for (k, &workers) in counts.iter().enumerate() {
            let generation = 2 + k as u64;
            fs::write(server.config_path(), room_server(workers).render(&control)).unwrap();
            phase.store(1 + k, Ordering::SeqCst);
            let out = reload_at(&control);
            expect_reload_ok(&out, generation, workers);
            // A removed slot's listener lives until its old worker has exited: the phase lasts
            // until the old generation is gone.
            st = wait_settled(&control, server.pid(), workers, generation, &st.pids());
            phase.store(0, Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
        connector.join().expect("connect loop")
    });
    assert!(ok > 0, "the connect loop never connected");
    let shrinking = |p: usize| p > 0 && (p == 1 || counts[p - 1] < counts[p - 2]);
    let (during_shrink, other): (Vec<_>, Vec<_>) =
        failures.iter().partition(|(p, _)| shrinking(*p));
    assert!(
        other.is_empty(),
        "{} connection attempts failed outside a shrinking reload: {other:?}",
        other.len()
    );
    if tcp_migrate_req() {
        assert!(
            during_shrink.is_empty(),
            "{} connection attempts failed while shrinking, with tcp_migrate_req = 1: \
             {during_shrink:?}",
            during_shrink.len()
        );
    }
    eprintln!(
        "{ok} connections; {} failed while shrinking (tcp_migrate_req {}): {:?}",
        during_shrink.len(),
        if tcp_migrate_req() { "on" } else { "off, not asserted" },
        during_shrink.iter().take(3).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Reloads with a quiet room
// ---------------------------------------------------------------------------------------------

/// Two reloads in a row with nothing said in between (the second generation's workers have
/// seen no room event of their own when they hand the sessions on): still nothing is replayed,
/// lost or duplicated — the probe line is every client's very next line.
#[test]
fn back_to_back_reloads_in_a_quiet_room() {
    let server = room_server(2).start();
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 6, "c");
    room.chat(0, "some history");
    for generation in 2..=4 {
        let out = reload_at(&control);
        expect_reload_ok(&out, generation, 2);
        st = wait_settled(&control, server.pid(), 2, generation, &st.pids());
    }
    room.quiet_check(5, "first line after three quiet reloads");
    room.quiet_check(1, "and another");
}

// ---------------------------------------------------------------------------------------------
// 9. A new worker dying in the middle of a hand-off
// ---------------------------------------------------------------------------------------------

/// The new worker of slot 0 is killed as soon as it is ready, while the old one hands it 750
/// or so sessions. That is a worker crash (SPEC §3.1: it may cost the sessions it held or
/// that were in transit to it), but the reload must still end with an answer, the room must see
/// every lost client leave (status counts exactly the clients still connected), and the next
/// reload must work.
#[test]
fn new_worker_crash_during_handoff_does_not_wedge_the_reload() {
    const CLIENTS: usize = 1500;
    const REPLY: Duration = Duration::from_secs(30);
    let server = room_server(2).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let fleet = Fleet::new();
    for i in 0..CLIENTS {
        let stream = TcpStream::connect_timeout(&server.addr(), CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
        fleet.add(stream, None, None, Vec::new());
    }
    fleet.wait(SETTLE_TIMEOUT, "every welcome", |t| t.iter().all(|x| x.nick.is_some()));
    wait_until(SETTLE_TIMEOUT, "status to count every client", || {
        (status(&server).clients as usize == CLIENTS).then_some(())
    });

    let ctl = control.clone();
    let reload =
        thread::spawn(move || run_chatd(&["reload", "--control", ctl.to_str().unwrap()], REPLY));
    let started = wait_until(START_TIMEOUT, "slot 0's generation-2 worker", || {
        server
            .log_lines()
            .into_iter()
            .find(|l| l.contains("slot 0: started worker pid") && l.ends_with("(generation 2)"))
    });
    let pid: i32 = started
        .split("started worker pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    server.wait_for_log(&format!("worker pid {pid} ready"), START_TIMEOUT);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the new worker");
    let out = reload.join().unwrap_or_else(|_| {
        panic!("`chatd reload` got no answer within {REPLY:?} after the new worker died")
    });
    eprintln!("reload after the crash: {}", output_text(&out).trim());

    // Whatever was lost left the room: status counts exactly the connections still open.
    wait_until(SETTLE_TIMEOUT, "status to count exactly the clients still connected", || {
        let open = fleet.with(|t| t.iter().filter(|x| x.closed.is_none()).count());
        (status(&server).clients as usize == open).then_some(())
    });
    let open = fleet.with(|t| t.iter().filter(|x| x.closed.is_none()).count());
    assert!(open > 0, "every client was lost");
    // The server is not stuck in that reload: the next one works.
    let now = status(&server);
    let out = reload_at(&control);
    expect_reload_ok(&out, now.generation + 1, 2);
    let after = wait_settled(&control, server.pid(), 2, now.generation + 1, &now.pids());
    assert!(after.pids().iter().all(|p| !st.pids().contains(p)));
    assert_eq!(after.clients as usize, open, "clients after the next reload");
}
