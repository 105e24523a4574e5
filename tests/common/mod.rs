//! Shared harness for chatd's end-to-end tests.
//!
//! These tests drive the **real binary over real sockets**: they start `chatd serve` (the
//! supervisor, which forks its workers) with a throw-away config in a temporary directory,
//! listen on loopback port 0, and talk to it with plain TCP clients, exactly like a user's
//! `nc` would. Nothing here links to the crate's internals, so the tests check the contract in
//! `SPEC.md`, not the implementation.
//!
//! What lives here, so every test file speaks the same language:
//!
//! * [`ServerBuilder`] / [`Server`]: writes the config, spawns the supervisor in its own process
//!   group, collects its stderr/stdout in the background, reads the chosen ports from its
//!   `listening on IP:PORT with N workers` log lines, finds worker pids in `/proc`, sends
//!   signals, waits for exit with a deadline. Dropping a `Server` SIGKILLs the supervisor, every
//!   worker it ever had and the whole process group, so a failing test never leaks processes;
//!   when the drop happens during a panic the server log is printed.
//! * [`Client`]: a line client with deadlines on every read. [`Client::read_line`] returns the
//!   line without its CRLF (a line without CRLF is an error: the protocol promises CRLF) and
//!   tells EOF, reset and timeout apart ([`ReadError`]).
//! * `/proc` helpers: which process holds the server side of a client's connection
//!   ([`worker_of`], [`workers_of`]), how many listening sockets share a port
//!   ([`listening_sockets`]), process states, children.
//! * [`wait_until`]: the one way to wait for a condition — poll with a deadline. Tests never
//!   `sleep` to synchronise; every wait ends on a readiness signal or fails loudly.
//! * Parsers for the default line formats ([`parse_welcome`], [`parse_chat`]).

// Every tests/*.rs binary compiles this module on its own and uses a different subset of it;
// without this, each binary would warn about the helpers it happens not to use.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Path of the binary under test.
pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// Deadline for one expected line. Generous: CI has 2 cores and runs test binaries in parallel.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for the server to log that it listens, for workers to appear or vanish, for exit.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval inside [`wait_until`] loops (never used as a synchronisation by itself).
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Server log
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// Number of output streams (stdout, stderr) still being read.
    open: usize,
}

/// Everything the server wrote to stderr and stdout, line by line, shared with reader threads.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl Log {
    fn spawn_reader(self: &Arc<Self>, stream: impl Read + Send + 'static, tag: &'static str) {
        self.state.lock().unwrap().open += 1;
        let log = Arc::clone(self);
        thread::Builder::new()
            .name(format!("chatd-{tag}"))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&buf);
                            let line = text.trim_end_matches(['\n', '\r']);
                            let line = if tag == "stderr" {
                                line.to_string()
                            } else {
                                format!("[{tag}] {line}")
                            };
                            log.state.lock().unwrap().lines.push(line);
                            log.changed.notify_all();
                        }
                    }
                }
                log.state.lock().unwrap().open -= 1;
                log.changed.notify_all();
            })
            .expect("spawn log reader thread");
    }

    fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits until `pred` holds on the lines, up to `timeout`; `Err` holds whether all output
    /// streams were closed (the server and all its children are gone) before that.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T, bool> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(v) = pred(&state.lines) {
                return Ok(v);
            }
            if state.open == 0 {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            // The slice bound lets callers also notice other conditions (e.g. process exit).
            let slice = (deadline - now).min(Duration::from_millis(100));
            state = self.changed.wait_timeout(state, slice).unwrap().0;
        }
    }
}

/// Parses a supervisor log line containing `listening on IP:PORT with N workers`.
pub fn parse_listen_line(line: &str) -> Option<(SocketAddr, usize)> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let (addr, rest) = rest.split_once(" with ")?;
    let (n, _) = rest.split_once(" worker")?;
    Some((addr.trim().parse().ok()?, n.trim().parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Builds a test config (TOML, SPEC §5). Defaults: `listen = ["127.0.0.1:0"]`, `workers = 4`,
/// and the control socket inside the server's temporary directory.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    listen: Vec<String>,
    workers: usize,
    server: Vec<String>,
    chat: Vec<String>,
    extra: Vec<String>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        ServerBuilder {
            listen: vec!["127.0.0.1:0".into()],
            workers: 4,
            server: Vec::new(),
            chat: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Replaces the listen addresses (e.g. `&["127.0.0.1:0", "[::1]:0"]`).
    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Adds one `key = value` line to `[server]`.
    pub fn server_key(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// Adds one `key = value` line to `[chat]`.
    pub fn chat_key(mut self, line: &str) -> Self {
        self.chat.push(line.to_string());
        self
    }

    /// Appends raw TOML (other tables, e.g. `[reload]`) after the generated ones.
    pub fn raw(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    /// The config text, with the control socket at `control_socket`.
    pub fn render(&self, control_socket: &Path) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| format!("{a:?}")).collect();
        let mut s = String::from("[server]\n");
        s += &format!("listen = [{}]\n", listen.join(", "));
        s += &format!("workers = {}\n", self.workers);
        s += &format!("control_socket = {:?}\n", control_socket.display().to_string());
        for l in &self.server {
            s += l;
            s += "\n";
        }
        if !self.chat.is_empty() {
            s += "\n[chat]\n";
            for l in &self.chat {
                s += l;
                s += "\n";
            }
        }
        for e in &self.extra {
            s += "\n";
            s += e;
            s += "\n";
        }
        s
    }

    /// Writes the config and starts the server; returns once every listen address is logged.
    pub fn start(self) -> Server {
        let dir = tempfile::tempdir().expect("create temp dir");
        let control = dir.path().join("control.sock");
        let config = self.render(&control);
        Server::start_in(dir, &config, self.listen.len())
    }
}

/// A running `chatd serve` (supervisor + workers). Killed with everything it started on drop.
pub struct Server {
    child: Child,
    dir: TempDir,
    config_path: PathBuf,
    log: Arc<Log>,
    listen: Vec<SocketAddr>,
    /// Every worker pid ever observed, so Drop can kill workers the supervisor lost track of.
    seen_workers: Mutex<HashSet<i32>>,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Starts `chatd serve --config DIR/chatd.toml` with `config` as the file's text, and waits
    /// (up to [`START_TIMEOUT`]) for `expected_listen` `listening on` log lines. The caller
    /// should point `server.control_socket` into `dir`, since tests run in parallel.
    pub fn start_in(dir: TempDir, config: &str, expected_listen: usize) -> Server {
        let config_path = dir.path().join("chatd.toml");
        fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(CHATD);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: Drop can kill the whole tree with one killpg.
            .process_group(0);
        // Never talk to a systemd that may be running the test runner itself.
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("spawn chatd serve");
        let log = Arc::new(Log::default());
        log.spawn_reader(child.stderr.take().unwrap(), "stderr");
        log.spawn_reader(child.stdout.take().unwrap(), "stdout");
        let mut server = Server {
            child,
            dir,
            config_path,
            log,
            listen: Vec::new(),
            seen_workers: Mutex::new(HashSet::new()),
            exit: None,
        };
        server.listen = server.wait_listening(expected_listen);
        server.worker_pids(); // remember the first generation for Drop
        server
    }

    /// Waits for `n` `listening on` lines; returns their addresses in log order.
    fn wait_listening(&mut self, n: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.log.wait_for(Duration::from_millis(200), |lines| {
                let addrs: Vec<SocketAddr> =
                    lines.iter().filter_map(|l| parse_listen_line(l)).map(|(a, _)| a).collect();
                (addrs.len() >= n).then_some(addrs)
            });
            if let Ok(addrs) = found {
                return addrs;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                panic!("chatd serve exited with {status} before listening");
            }
            if Instant::now() >= deadline {
                panic!(
                    "chatd serve did not log {n} `listening on` line(s) within {START_TIMEOUT:?}"
                );
            }
        }
    }

    /// The supervisor's pid (also the process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Listen addresses as logged at start (ports resolved), in log order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.listen[0]
    }

    /// The first listen address's port.
    pub fn port(&self) -> u16 {
        self.listen[0].port()
    }

    /// Current worker pids: children of the supervisor whose argv[1] is `worker`, sorted.
    pub fn worker_pids(&self) -> Vec<i32> {
        let pids = worker_children(self.pid());
        self.seen_workers.lock().unwrap().extend(pids.iter().copied());
        pids
    }

    /// Polls until exactly `n` workers exist and `pred` accepts them; returns them.
    pub fn wait_for_workers_where(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&[i32]) -> bool,
    ) -> Vec<i32> {
        wait_until(timeout, what, || {
            let pids = self.worker_pids();
            (pids.len() == n && pred(&pids)).then_some(pids)
        })
    }

    /// Polls until exactly `n` workers exist; returns them.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Vec<i32> {
        self.wait_for_workers_where(n, timeout, &format!("{n} worker processes"), |_| true)
    }

    /// All log lines so far (stderr, and stdout lines prefixed `[stdout]`).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.snapshot()
    }

    pub fn log_contains(&self, pattern: &str) -> bool {
        self.log.snapshot().iter().any(|l| l.contains(pattern))
    }

    /// Waits for a log line containing `pattern` (at any time since start); panics on timeout.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_log_count(pattern, 1, timeout)
    }

    /// Waits until `n` log lines contain `pattern`; returns the n-th; panics on timeout.
    pub fn wait_for_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> String {
        let r = self.log.wait_for(timeout, |lines| {
            lines.iter().filter(|l| l.contains(pattern)).nth(n - 1).cloned()
        });
        match r {
            Ok(line) => line,
            Err(true) => panic!("server output closed before {n}× log line {pattern:?}"),
            Err(false) => {
                panic!("timed out after {timeout:?} waiting for {n}× log line {pattern:?}")
            }
        }
    }

    /// Sends `sig` to the supervisor.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}) failed: {e}", self.pid()));
    }

    /// Waits for the supervisor to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        let child = &mut self.child;
        let status =
            wait_until(timeout, "the supervisor to exit", || child.try_wait().expect("try_wait"));
        self.exit = Some(status);
        status
    }

    /// Has the supervisor exited (without waiting)?
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Connects a client to the first listen address.
    pub fn connect(&self, label: &str) -> Client {
        Client::connect(self.addr(), label)
    }

    /// Connects, reads the welcome line and returns the client with its nick and online count.
    pub fn join(&self, label: &str) -> (Client, String, usize) {
        let mut c = self.connect(label);
        let (nick, count) = c.expect_welcome();
        (c, nick, count)
    }

    /// Runs `chatd ARGS...` (e.g. `status`, `reload`) with this server's config; see [`run_chatd`].
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let path = self.config_path.to_str().expect("utf-8 temp path");
        all.extend(["--config", path]);
        run_chatd(&all, timeout)
    }

    fn kill_everything(&mut self) {
        let sup = Pid::from_raw(self.pid());
        let running = self.exit.is_none() && self.child.try_wait().ok().flatten().is_none();
        if running {
            // Freeze the supervisor so it cannot fork replacements while we kill its children.
            let _ = kill(sup, Signal::SIGSTOP);
            self.worker_pids();
            for pid in descendants(self.pid()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        // Workers seen earlier that may have been orphaned (still check they are ours).
        for &pid in self.seen_workers.lock().unwrap().iter() {
            if is_chatd_worker(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = killpg(sup, Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_everything();
        if thread::panicking() {
            let lines = self.log.snapshot();
            eprintln!(
                "----- chatd log (supervisor pid {}, {} lines) -----",
                self.pid(),
                lines.len()
            );
            for l in &lines {
                eprintln!("{l}");
            }
            eprintln!("----- end of chatd log -----");
        }
    }
}

/// Runs `chatd ARGS...` to completion with a deadline (killing it on timeout, then panicking).
pub fn run_chatd(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(CHATD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`chatd {}` did not finish within {timeout:?}", args.join(" "));
        }
        thread::sleep(POLL);
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// stdout and stderr of a command, as one string (stdout first).
pub fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Why [`Client::read_line`] returned no line.
#[derive(Debug)]
pub enum ReadError {
    /// No complete line before the deadline.
    Timeout,
    /// Orderly close by the server (FIN) with nothing pending.
    Eof,
    /// Connection reset / aborted.
    Reset(io::ErrorKind),
    /// The server closed after sending an incomplete line (no LF); holds the fragment.
    Truncated(String),
    /// A line that does not end with CRLF or is not UTF-8 (lossy text).
    Malformed(String),
    /// Any other I/O error.
    Io(io::Error),
}

impl ReadError {
    /// EOF or reset: the connection is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadError::Eof | ReadError::Reset(_))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout => write!(f, "timeout"),
            ReadError::Eof => write!(f, "EOF"),
            ReadError::Reset(k) => write!(f, "connection reset ({k:?})"),
            ReadError::Truncated(s) => write!(f, "EOF after incomplete line {s:?}"),
            ReadError::Malformed(s) => write!(f, "malformed line {s:?} (no CRLF or not UTF-8)"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// A line-protocol client with deadlines. `label` names it in failure messages; every line read
/// is kept in `transcript` for those messages.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    label: String,
    transcript: Vec<String>,
}

impl Client {
    /// Connects with [`CONNECT_TIMEOUT`]; panics on failure.
    pub fn connect(addr: SocketAddr, label: &str) -> Client {
        Client::try_connect(addr, label)
            .unwrap_or_else(|e| panic!("{label}: connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr, label: &str) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::new(), label: label.to_string(), transcript: Vec::new() })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Our side's port: identifies the connection in `/proc/net/tcp*`.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local_addr").port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Every line read so far.
    pub fn transcript(&self) -> &[String] {
        &self.transcript
    }

    fn context(&self) -> String {
        let tail = &self.transcript[self.transcript.len().saturating_sub(8)..];
        format!(
            "client {} (port {:?}), {} lines read, the last ones: {tail:#?}",
            self.label,
            self.stream.local_addr().ok(),
            self.transcript.len()
        )
    }

    /// Reads one line (without CRLF) within `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &raw[..raw.len() - 1];
                let Some(line) = line.strip_suffix(b"\r") else {
                    return Err(ReadError::Malformed(String::from_utf8_lossy(&raw).into_owned()));
                };
                let line = String::from_utf8(line.to_vec()).map_err(|e| {
                    ReadError::Malformed(String::from_utf8_lossy(e.as_bytes()).into_owned())
                })?;
                self.transcript.push(line.clone());
                return Ok(line);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).map_err(ReadError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Eof),
                Ok(0) => {
                    let frag = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Err(ReadError::Truncated(frag));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    k @ (io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe) => return Err(ReadError::Reset(k)),
                    _ => return Err(ReadError::Io(e)),
                },
            }
        }
    }

    /// Reads one line within [`LINE_TIMEOUT`]; panics (with context) if there is none.
    pub fn next_line(&mut self) -> String {
        match self.read_line(LINE_TIMEOUT) {
            Ok(l) => l,
            Err(e) => panic!("expected a line, got {e}; {}", self.context()),
        }
    }

    /// The next line must be exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        match self.read_line(LINE_TIMEOUT) {
            Ok(l) if l == expected => {}
            Ok(l) => panic!("expected line {expected:?}, got {l:?}; {}", self.context()),
            Err(e) => panic!("expected line {expected:?}, got {e}; {}", self.context()),
        }
    }

    /// The next line must be the welcome line; returns (nick, online count).
    pub fn expect_welcome(&mut self) -> (String, usize) {
        let l = self.next_line();
        parse_welcome(&l)
            .unwrap_or_else(|| panic!("expected a welcome line, got {l:?}; {}", self.context()))
    }

    /// The next line must be a chat line `HH:MM:SS <nick> text`; returns the whole line.
    pub fn expect_chat(&mut self, nick: &str, text: &str) -> String {
        let l = self.next_line();
        match parse_chat(&l) {
            Some(c) if c.nick == nick && c.text == text => l,
            _ => panic!(
                "expected chat line `HH:MM:SS <{nick}> {text}`, got {l:?}; {}",
                self.context()
            ),
        }
    }

    /// Reads lines until one satisfies `pred` (returned); the skipped ones stay in the transcript.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.read_line(deadline.saturating_duration_since(Instant::now()))?;
            if pred(&l) {
                return Ok(l);
            }
        }
    }

    /// Reads until the connection ends; returns the lines read and how it ended
    /// (`Eof`, `Reset`, `Truncated`, or `Timeout` if it did not end within `timeout`).
    pub fn read_to_close(&mut self, timeout: Duration) -> (Vec<String>, ReadError) {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            match self.read_line(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => lines.push(l),
                Err(e) => return (lines, e),
            }
        }
    }

    /// The next thing read must be an orderly EOF (no more lines, no reset).
    pub fn expect_eof(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(ReadError::Eof) => {}
            Ok(l) => panic!("expected EOF, got line {l:?}; {}", self.context()),
            Err(e) => panic!("expected EOF, got {e}; {}", self.context()),
        }
    }

    /// The connection must end (EOF or reset) with no further line.
    pub fn expect_closed(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(e) if e.is_closed() => {}
            Ok(l) => panic!("expected the connection to end, got line {l:?}; {}", self.context()),
            Err(e) => panic!("expected the connection to end, got {e}; {}", self.context()),
        }
    }

    /// Sends `line` followed by LF; panics on error.
    pub fn send_line(&mut self, line: &str) {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        if let Err(e) = self.stream.write_all(&data) {
            panic!("send {line:?}: {e}; {}", self.context());
        }
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// A second handle on the socket, e.g. to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone TcpStream")
    }

    /// Half-close: the server reads EOF, we can still read.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------------------------
// Line formats (defaults of SPEC §2)
// ---------------------------------------------------------------------------------------------

/// `* Welcome to chatd. You are NICK. K online. Type /help for commands.` → (NICK, K).
pub fn parse_welcome(line: &str) -> Option<(String, usize)> {
    let rest = line.strip_prefix("* Welcome to chatd. You are ")?;
    let rest = rest.strip_suffix(" online. Type /help for commands.")?;
    let (nick, count) = rest.rsplit_once(". ")?;
    if nick.is_empty() || !nick.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    Some((nick.to_string(), count.parse().ok()?))
}

/// A chat line in the default format `{time} <{nick}> {text}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    pub time: String,
    pub nick: String,
    pub text: String,
}

/// Parses `HH:MM:SS <nick> text`.
pub fn parse_chat(line: &str) -> Option<ChatLine> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    let time_ok = b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && time[0..2] < *"24"
        && time[3..5] < *"60"
        && time[6..8] < *"61";
    if !time_ok {
        return None;
    }
    let rest = rest.strip_prefix('<')?;
    let (nick, text) = rest.split_once("> ")?;
    Some(ChatLine { time: time.to_string(), nick: nick.to_string(), text: text.to_string() })
}

// ---------------------------------------------------------------------------------------------
// /proc: processes
// ---------------------------------------------------------------------------------------------

/// Direct children of `pid` (from every thread's `children` file).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// All descendants of `pid` (children, their children, …).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// argv of a process (empty if gone).
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Is `pid` a live chatd worker (argv[1] == "worker")?
pub fn is_chatd_worker(pid: i32) -> bool {
    let argv = cmdline(pid);
    argv.get(1).map(String::as_str) == Some("worker") && process_alive(pid)
}

/// Children of the supervisor `pid` that are workers, sorted. A child that is forked but not yet
/// exec'd (argv still `serve`) is not counted.
pub fn worker_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|&c| is_chatd_worker(c)).collect()
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, `Z`, …), `None` if the pid is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is in parentheses and may contain spaces; the state follows the last ')'.
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// Running or sleeping or stopped — not gone, not a zombie.
pub fn process_alive(pid: i32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

// ---------------------------------------------------------------------------------------------
// /proc: sockets
// ---------------------------------------------------------------------------------------------

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Debug)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Kernel state number: 0x01 ESTABLISHED, 0x0A LISTEN, …
    pub state: u8,
    /// 0 for a connection still in an accept queue (no file yet).
    pub inode: u64,
}

pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host byte order.
    let ip: IpAddr = match ip.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes()).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// All TCP sockets of this network namespace (IPv4 and IPv6 tables).
pub fn tcp_table() -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote), Ok(state), Ok(inode)) = (
                parse_proc_addr(f[1]),
                parse_proc_addr(f[2]),
                u8::from_str_radix(f[3], 16),
                f[9].parse::<u64>(),
            ) else {
                continue;
            };
            out.push(TcpEntry { local, remote, state, inode });
        }
    }
    out
}

/// Inodes of the sockets open in `pid` (from `/proc/PID/fd/*` → `socket:[INODE]`).
pub fn socket_inodes_of(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(inode) = n.parse() {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// For each client port: the pid among `pids` that holds the server side of that connection
/// (ESTABLISHED, local port `server_port`, remote port = the client's port). One `/proc` scan.
pub fn workers_of(client_ports: &[u16], server_port: u16, pids: &[i32]) -> Vec<Option<i32>> {
    let mut inode_by_port: HashMap<u16, u64> = HashMap::new();
    for e in tcp_table() {
        if e.state == TCP_ESTABLISHED && e.local.port() == server_port && e.inode != 0 {
            inode_by_port.insert(e.remote.port(), e.inode);
        }
    }
    let mut owner: HashMap<u64, i32> = HashMap::new();
    for &pid in pids {
        for inode in socket_inodes_of(pid) {
            owner.entry(inode).or_insert(pid);
        }
    }
    client_ports
        .iter()
        .map(|p| inode_by_port.get(p).and_then(|inode| owner.get(inode)).copied())
        .collect()
}

/// The pid among `worker_pids` serving the client whose local port is `client_local_port`.
pub fn worker_of(client_local_port: u16, server_port: u16, worker_pids: &[i32]) -> Option<i32> {
    workers_of(&[client_local_port], server_port, worker_pids)[0]
}

/// Number of distinct listening sockets bound to exactly `addr`.
pub fn listening_sockets(addr: SocketAddr) -> usize {
    tcp_table()
        .into_iter()
        .filter(|e| e.state == TCP_LISTEN && e.local == addr)
        .map(|e| e.inode)
        .collect::<HashSet<_>>()
        .len()
}

/// Can this machine bind `[::1]`?
pub fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}
