//! A TLS terminator in front of a plain server: `socat` accepts TLS on a port of its own
//! (127.0.0.1, chosen by the kernel) with a server certificate from [`Certificates`], and relays
//! each connection as plain TCP to the target, so TLS clients can be tested against a real
//! chatd that is served in the clear. Dropping the relay kills socat and its per-connection
//! children.
//!
//! socat is required: without it these tests fail (CI installs it in `.ci/run`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::thread;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{Pki, START_TIMEOUT};

/// A CA of its own ([`Pki`]) and one server certificate it issued for 127.0.0.1 and localhost,
/// in a temporary directory that goes with it.
pub struct Certificates {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl Certificates {
    pub fn new() -> Certificates {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path());
        let (cert, key) = pki.issue("server", 1);
        Certificates { ca: pki.ca, cert, key, _dir: dir }
    }
}

/// A running socat TLS relay.
pub struct TlsRelay {
    child: Child,
    addr: SocketAddr,
}

impl TlsRelay {
    /// Starts relaying TLS on a new port to `target`; returns once socat listens. `port` 0
    /// lets the kernel choose.
    pub fn start(pki: &Certificates, target: SocketAddr, port: u16) -> TlsRelay {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            pki.cert.display(),
            pki.key.display()
        );
        let mut child = Command::new("socat")
            .args(["-d", "-d", &listen, &format!("TCP:{target}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run socat ({e}): the TLS client tests need it (apt-get install socat)"
                )
            });
        // socat logs `listening on AF=2 127.0.0.1:PORT` (the port it got); its log is read to
        // the end so socat never blocks on a full pipe.
        let stderr = child.stderr.take().expect("socat's stderr");
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.split("listening on AF=2 ").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>());
                }
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("socat logged a listening address that does not parse: {e}"),
            Err(_) => {
                let status = child.try_wait();
                panic!("socat did not listen within {START_TIMEOUT:?} (exit: {status:?})")
            }
        };
        TlsRelay { child, addr }
    }

    /// Where TLS clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
