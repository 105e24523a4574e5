//! End-to-end tests of the rolling reload (docs/control.md, "Reload"): sessions handed from one
//! worker generation to the next without a disconnect or a lost, duplicated or reordered room line,
//! under load; a broken config changing nothing; a changed worker count; an upgraded binary picked
//! up from disk; the drain path when hand-off is off; SIGHUP; connection attempts while the worker
//! count changes; reloads in a quiet room; a new worker crashing mid-hand-off.
//!
//! Everything runs against the real binary over loopback sockets, and every wait ends on a
//! readiness signal (a line read, a `chatd status --json` answer, a log line) or fails after a
//! deadline.
//!
//! The helpers come first: `control.rs` (`chatd status --json`, `chatd reload`, waiting for a
//! reload to settle), `room.rs` (a few dozen blocking clients) and `fleet.rs` (a thousand
//! clients read by a few poll(2) threads, and connect loops). Then the tests, by what they
//! check: `handoff.rs` (sessions moved to the next generation: under load, on SIGHUP, in a
//! quiet room, when a new worker dies mid-hand-off), `big_backlogs.rs` (sessions carrying tens
//! of MB of unsent output, handed over while heartbeats stay on time), `config.rs` (a broken
//! config, hand-off switched off), `worker_count.rs` (fewer or more workers, connecting
//! meanwhile), `upgrade.rs` (a new binary on disk: the supervisor re-executes itself; one that
//! fails is not used), `open_files.rs` (a worker out of file descriptors) and `tls.rs` (TLS
//! sessions moving with their sockets, certificate rotation).

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;

mod control;
mod fleet;
mod room;

mod big_backlogs;
mod config;
mod handoff;
mod open_files;
mod tls;
mod upgrade;
mod worker_count;

use std::time::Duration;

use common::ServerBuilder;

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
