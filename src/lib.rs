//! chatd: a multi-process line chat server. `docs/architecture.md` walks through the design;
//! in short, a message goes client → [`worker`] → [`bus`] → [`supervisor`]'s hub (numbered,
//! rendered) → bus → every worker → every client.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bad_frame;
pub mod bus;
pub mod cli;
pub mod client;
pub mod cloexec;
pub mod cluster;
pub mod config;
pub mod control;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod moderation;
pub mod protocol;
pub mod signals;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;
pub mod version;
pub mod web;
pub mod worker;
