//! The server under test: [`ServerBuilder`] writes a config, [`Server`] runs `chatd serve` with
//! it and owns everything it starts (killed on drop), and [`run_chatd`] runs the other
//! subcommands (`status`, `reload`, `check-config`) with a deadline. Starting, logging and
//! cleaning up are the subtle parts of the harness, so they live together here, apart from the
//! clients that talk to the server.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::client::Client;
use super::procfs::{descendants, is_chatd_worker, worker_children};
use super::{CHATD, POLL, START_TIMEOUT, wait_until};

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

/// Parses a supervisor log line containing `listening on IP:PORT with N workers` (or
/// `IP:PORT (tls)`, `(web)`, `(web, tls)`).
pub fn parse_listen_line(line: &str) -> Option<(SocketAddr, usize)> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let (addr, rest) = rest.split_once(" with ")?;
    let addr = addr.split_once(" (").map_or(addr, |(addr, _)| addr);
    let (n, _) = rest.split_once(" worker")?;
    Some((addr.trim().parse().ok()?, n.trim().parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Builds a test config (TOML, docs/configuration.md). Defaults: `listen = ["127.0.0.1:0"]`,
/// `workers = 4`, and the control socket inside the server's temporary directory.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    listen: Vec<String>,
    workers: usize,
    server: Vec<String>,
    chat: Vec<String>,
    extra: Vec<String>,
    open_files: Option<u64>,
    own_binary: bool,
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
            open_files: None,
            own_binary: false,
        }
    }

    /// Starts the server with this soft `RLIMIT_NOFILE` (the hard limit stays): the supervisor
    /// and every worker it starts inherit it, as under systemd's `LimitNOFILE=`.
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Starts the server from a copy of the binary in its own directory ([`Server::exe`]), so
    /// a test can replace that file as a package upgrade does.
    pub fn own_binary(mut self) -> Self {
        self.own_binary = true;
        self
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
        let exe = if self.own_binary {
            let exe = dir.path().join("bin").join("chatd");
            fs::create_dir_all(dir.path().join("bin")).expect("bin dir");
            fs::copy(CHATD, &exe).expect("copy the binary");
            exe
        } else {
            PathBuf::from(CHATD)
        };
        Server::start_limited(dir, &config, self.listen.len(), self.open_files, exe)
    }
}

/// A running `chatd serve` (supervisor + workers). Killed with everything it started on drop.
pub struct Server {
    child: Child,
    dir: TempDir,
    exe: PathBuf,
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
        Server::start_limited(dir, config, expected_listen, None, PathBuf::from(CHATD))
    }

    /// [`Server::start_in`], with a soft open-files limit when `open_files` is set.
    fn start_limited(
        dir: TempDir,
        config: &str,
        expected_listen: usize,
        open_files: Option<u64>,
        exe: PathBuf,
    ) -> Server {
        let config_path = dir.path().join("chatd.toml");
        fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(&exe);
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
        if let Some(limit) = open_files {
            let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes one rlimit through the pointer we pass.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
            assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
            let wanted = libc::rlimit { rlim_cur: limit.min(current.rlim_max), ..current };
            // SAFETY: the closure runs between fork and exec and only calls setrlimit, which is
            // async-signal-safe; `wanted` is a plain value copied into it.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn chatd serve");
        let log = Arc::new(Log::default());
        log.spawn_reader(child.stderr.take().unwrap(), "stderr");
        log.spawn_reader(child.stdout.take().unwrap(), "stdout");
        let mut server = Server {
            child,
            dir,
            exe,
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

    /// The binary the server was started from.
    pub fn exe(&self) -> &Path {
        &self.exe
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
        kill_tree(&mut self.child);
        // Workers seen earlier that may have been orphaned (still check they are ours).
        for &pid in self.seen_workers.lock().unwrap().iter() {
            if is_chatd_worker(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_everything();
        if thread::panicking() {
            print_log(&format!("chatd log (supervisor pid {})", self.pid()), &self.log.snapshot());
        }
    }
}

/// Ends a `chatd serve` a test started, and everything it started: the supervisor is frozen
/// first, so it cannot fork replacements while its descendants are killed.
pub fn kill_tree(child: &mut Child) {
    let sup = Pid::from_raw(child.id() as i32);
    if child.try_wait().ok().flatten().is_none() {
        let _ = kill(sup, Signal::SIGSTOP);
        for pid in descendants(sup.as_raw()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = killpg(sup, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// A process's log, for a test that failed.
pub fn print_log(title: &str, lines: &[String]) {
    eprintln!("----- {title}, {} lines -----", lines.len());
    for l in lines {
        eprintln!("{l}");
    }
    eprintln!("----- end of {title} -----");
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
