//! End-to-end tests of the rolling reload (docs/control.md, "Reload"): sessions handed from one
//! worker generation to the next without a disconnect or a lost, duplicated or reordered room line,
//! under load; a broken config changing nothing; a changed worker count; the drain path when hand-off is off; SIGHUP; connection attempts while the worker
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
//! meanwhile), `open_files.rs` (a worker out of file descriptors) and `tls.rs` (TLS
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
mod worker_count;

mod settings;

use settings::{CONTROL_TIMEOUT, SETTLE_TIMEOUT, room_server};
