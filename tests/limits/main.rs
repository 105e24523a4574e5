//! End-to-end tests of limits and bad input — always a clear reaction, never a crash
//! (docs/protocol.md, "Limits and bad input"; docs/configuration.md, "What is checked"):
//! overlong lines (and a 10 MB one), rate limiting by back-pressure, slow consumers, idle
//! clients, `max_clients`, `max_clients_per_ip`, running out of file descriptors, a listen address
//! another process holds, malformed control requests, and config files and control sockets that
//! are not what they should be. Real binary, real loopback sockets, every wait bounded.
//!
//! Helpers: `common/room.rs` (a room of clients spread over workers), `raw_client.rs` (a client bound
//! to a chosen source address or with a small receive buffer) and `proc_usage.rs` (a worker's
//! memory, CPU time and descriptors). The tests, by the limit they exercise: `big_answers.rs`
//! (answers bigger than a bus frame, `/who` floods), `input.rs`
//! (overlong lines, the rate limit), `slow_and_idle.rs` (slow consumers, idle clients),
//! `output_memory.rs` (a worker's memory for output follows the backlogs),
//! `capacity.rs` (`max_clients`, `max_clients_per_ip`, out of file descriptors),
//! `address_in_use.rs` (a listen address another process holds),
//! `control.rs` (malformed control requests, `chatd stop`, a control socket served by a stranger)
//! and `config_files.rs` (config paths that are no regular file, a `control_socket` that is no
//! socket, a config that is not TOML given to `reload|status|stop`).

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;

mod proc_usage;
mod raw_client;
use common::room;

mod address_in_use;
mod big_answers;
mod capacity;
mod config_files;
mod control;
mod input;
mod output_memory;
mod slow_and_idle;
