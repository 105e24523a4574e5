//! End-to-end tests of TLS listeners (docs/tls.md) with real clients: Python's `ssl`,
//! `openssl s_client` (KeyUpdates included), `socat`; the certificate checks of `check-config`
//! and `reload`; and hostile or broken clients on the TLS port — plaintext, garbage, a TLS 1.2
//! client, a stalled handshake, a junk record after the handshake, a KeyUpdate flood — each
//! closed with the right reaction while a plain client in the room notices nothing.
//! TLS sessions across reloads are in tests/reload/tls.rs.
//!
//! Every test makes its own throwaway CA with `openssl` (`common::Pki`).

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod hostile;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A throwaway CA and a server certificate for 127.0.0.1 in a fresh directory.
fn pki() -> (tempfile::TempDir, Pki, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("server", 1);
    (dir, pki, cert, key)
}

/// A room server with a TLS listener too; `extra` goes into `[tls]`.
fn tls_server(
    workers: usize,
    cert: &std::path::Path,
    key: &std::path::Path,
    extra: &[&str],
) -> Server {
    start_tls(room::room_server(workers), cert, key, extra)
}

/// Reads from `stream` until it ends; what was read, and whether it ended (EOF or reset)
/// rather than timing out.
fn read_to_end(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// `chatd_rejected_total{reason="tls"}` from the server's metrics endpoint, once it reaches
/// `at_least`.
fn tls_rejections(server: &Server, at_least: f64) -> f64 {
    let line = server.wait_for_log("serving metrics on http://", START_TIMEOUT);
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("metrics address in {line:?}"));
    wait_until(LINE_TIMEOUT, "chatd_rejected_total{reason=\"tls\"}", || {
        let mut s = TcpStream::connect(addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("chatd_rejected_total{reason=\"tls\"} "))?
            .trim()
            .parse()
            .ok()?;
        (value >= at_least).then_some(value)
    })
}
