//! Shared harness for chatd's end-to-end tests.
//!
//! These tests drive the **real binary over real sockets**: they start `chatd serve` (the
//! supervisor, which forks its workers) with a throw-away config in a temporary directory,
//! listen on loopback port 0, and talk to it with plain TCP clients, exactly like a user's
//! `nc` would. Nothing here links to the crate's internals, so the tests check the contract the
//! docs state (docs/protocol.md, docs/control.md, docs/configuration.md), not the
//! implementation.
//!
//! What lives here, so every test file speaks the same language (`common::X` works for every
//! item below, whichever file holds it):
//!
//! * [`ServerBuilder`] / [`Server`] (`server.rs`): writes the config, spawns the supervisor in its
//!   own process group, collects its stderr/stdout in the background, reads the chosen ports
//!   from its `listening on IP:PORT with N workers` log lines, finds worker pids in `/proc`,
//!   sends signals, waits for exit with a deadline. Dropping a `Server` SIGKILLs the supervisor,
//!   every worker it ever had and the whole process group, so a failing test never leaks
//!   processes; when the drop happens during a panic the server log is printed. [`run_chatd`]
//!   runs the other subcommands with a deadline.
//! * [`Client`] (`client.rs`): a line client with deadlines on every read.
//!   [`Client::read_line`] returns the line without its CRLF (a line without CRLF is an error:
//!   the protocol promises CRLF) and tells EOF, reset and timeout apart ([`ReadError`]). Beside
//!   it, parsers for the default line formats ([`parse_welcome`], [`parse_chat`]).
//! * `/proc` helpers (`procfs.rs`): which process holds the server side of a client's
//!   connection ([`worker_of`], [`workers_of`]), how many listening sockets share a port
//!   ([`listening_sockets`]), process states, children.
//! * TLS (`tls.rs`): a throwaway CA made with `openssl` ([`Pki`]), a server with a `[tls]`
//!   listener ([`start_tls`]), and [`TlsBridge`], real Python `ssl` sessions behind plain
//!   connections so the line helpers drive TLS clients.
//! * A TLS terminator (`tls_relay.rs`): [`TlsRelay`], `socat` accepting TLS in front of a
//!   plain server, and [`Certificates`], a [`Pki`] with one server certificate.
//! * WebSocket (`web.rs`): [`ws_connect`], tungstenite's client handshake with deadlines;
//!   [`WsClient`], a line client over the socket it returns; [`ws_frame`], hand-written frames
//!   for the malformed ones no library sends.
//! * [`wait_until`] (here): the one way to wait for a condition — poll with a deadline. Tests
//!   never `sleep` to synchronise; every wait ends on a readiness signal or fails loudly.

// Every test binary (tests/*.rs, tests/*/main.rs) compiles this module on its own and uses a
// different subset of it; without this, each binary would warn about the helpers it happens not
// to use. (An inner attribute, so it covers the submodules too.)
#![allow(dead_code)]

mod client;
pub mod nats;
mod procfs;
pub mod room;
mod server;
mod tls;
mod tls_relay;
mod web;

// Re-exported, so `common::X` and `use common::*` reach every helper whichever file holds it.
// A binary that uses nothing of one submodule would call its re-export unused (same reason as
// the `dead_code` allowance above).
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use procfs::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use tls_relay::*;
#[allow(unused_imports)]
pub use web::*;

use std::thread;
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// Deadline for one expected line. Generous: CI has 2 cores and runs test binaries in parallel.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for the server to log that it listens, for workers to appear or vanish, for exit.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on now, for a process the test starts to bind: one below
/// the kernel's ephemeral range (32768 and up here), so that no outgoing connection of another
/// process takes it before that process binds it (one from the ephemeral range sometimes was).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919);
    loop {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(k) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

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
