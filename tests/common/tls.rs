//! TLS for end-to-end tests: a throwaway certificate authority made with the `openssl` CLI for
//! each test ([`Pki`]), a server with a `[tls]` listener ([`start_tls`]), and [`TlsBridge`]: a
//! Python `ssl` process holding real TLS sessions to chatd, one per plain connection a test
//! makes to it, so every plain-line helper (a [`Client`], a fleet) drives TLS clients too.
//!
//! The tools come from Debian packages (`openssl`, `python3`, `socat`) that `.ci/run` installs;
//! a test fails, with the package's name, when one is missing. [`Tool`] runs a command-line
//! client (`openssl s_client`, `socat`) with its output read line by line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// Runs a tool that must be installed; panics naming its Debian package otherwise.
pub fn tool(program: &str, args: &[&str], dir: &Path) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (Debian package {program}): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A certificate authority of the test's own, and the server certificates it issued.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
}

impl Pki {
    /// A new CA (EC P-256) in `dir`.
    pub fn new(dir: &Path) -> Pki {
        tool(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=chatd test CA",
            ],
            dir,
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .expect("write san.ext");
        Pki { dir: dir.to_path_buf(), ca: dir.join("ca.pem") }
    }

    /// A server certificate and key for 127.0.0.1 named `name` (`NAME.pem`, `NAME.key`), with
    /// `serial`; their paths.
    pub fn issue(&self, name: &str, serial: u32) -> (PathBuf, PathBuf) {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        tool(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=127.0.0.1",
            ],
            &self.dir,
        );
        let serial = serial.to_string();
        tool(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
            &self.dir,
        );
        (self.dir.join(pem), self.dir.join(key))
    }
}

/// The `[tls]` table for a listener on a free port with this certificate and key, plus `extra`
/// lines (e.g. `handshake_timeout = "1s"`).
pub fn tls_table(cert: &Path, key: &Path, extra: &[&str]) -> String {
    let mut table = format!(
        "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    for line in extra {
        table += line;
        table += "\n";
    }
    table
}

/// Starts `builder`'s server (one plain listen address) with a TLS listener too
/// (`tls_table`); the TLS address is [`tls_addr`].
pub fn start_tls(builder: ServerBuilder, cert: &Path, key: &Path, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("create temp dir");
    let config = builder.raw(&tls_table(cert, key, extra)).render(&dir.path().join("control.sock"));
    Server::start_in(dir, &config, 2)
}

/// The TLS listener of a server started with [`start_tls`].
pub fn tls_addr(server: &Server) -> SocketAddr {
    server.listen_addrs()[1]
}

/// A Python process that makes a TLS connection to chatd for each plain connection to its own
/// port (`tls_bridge.py`), and reports handshakes and how sessions ended.
pub struct TlsBridge {
    child: Child,
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<String>>>,
}

impl TlsBridge {
    pub fn start(ca: &Path, target: SocketAddr) -> TlsBridge {
        let script = ca.with_file_name("tls_bridge.py");
        std::fs::write(&script, include_str!("tls_bridge.py")).expect("write tls_bridge.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(ca)
            .arg(target.ip().to_string())
            .arg(target.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 (Debian package python3): {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port: u16 = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.trim().parse().ok())
            .expect("tls_bridge.py prints its port");
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        TlsBridge { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), events }
    }

    /// A line client whose connection to chatd is a TLS session of the bridge's; `label` names
    /// it in failures. Returns once its TLS handshake is done (the bridge connects at once).
    pub fn connect(&self, label: &str) -> Client {
        let before = self.handshakes();
        let c = Client::connect(self.addr, label);
        wait_until(LINE_TIMEOUT, "the bridge's TLS handshake", || {
            (self.handshakes() > before || self.events().iter().any(|e| e.contains("failed")))
                .then_some(())
        });
        c
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// TLS handshakes the bridge did.
    pub fn handshakes(&self) -> usize {
        self.events().iter().filter(|e| e.starts_with("handshake ")).count()
    }

    /// Waits until a session ended; how (`clean`, `eof`, `local`, `error: …`).
    pub fn wait_closed(&self, timeout: Duration) -> String {
        wait_until(timeout, "a TLS session of the bridge to end", || {
            self.events().iter().find_map(|e| e.strip_prefix("closed ").map(str::to_owned))
        })
    }
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command-line TLS client (`openssl s_client`, `socat`) with its stdin and its stdout read
/// line by line on a thread.
pub struct Tool {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Tool {
    pub fn start(program: &str, args: &[&str]) -> Tool {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (Debian package {program}): {e}"));
        let (tx, lines) = channel();
        for out in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Tool { stdin: child.stdin.take(), child, lines, seen: Vec::new() }
    }

    /// `openssl s_client` to `addr` trusting `ca`, not quiet (so `k`/`K` lines send KeyUpdates).
    pub fn s_client(addr: SocketAddr, ca: &std::path::Path, extra: &[&str]) -> Tool {
        let connect = addr.to_string();
        let ca = ca.display().to_string();
        let mut args =
            vec!["s_client", "-connect", &connect, "-CAfile", &ca, "-verify_return_error"];
        args.extend_from_slice(extra);
        Tool::start("openssl", &args)
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to the tool");
        stdin.flush().expect("flush");
    }

    /// Waits for a line containing `pattern`; returns it.
    pub fn expect(&mut self, pattern: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(pattern) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {pattern:?}; the tool printed {:#?}", self.seen),
            }
        }
    }

    /// Waits for the tool to exit (its stdin closed first); everything it printed.
    pub fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + LINE_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("wait").is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
