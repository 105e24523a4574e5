//! The cluster room against a real 3-node NATS JetStream cluster on loopback (docs/cluster.md):
//! the bridge to NATS (`bridge.rs`: one order on every host, de-duplication, outages, a stream
//! leader killed) and the door the hub calls (`door.rs`: hosts agreeing on the room, a host that
//! vanishes), linked as a library; then `chatd serve` hosts driven over their sockets
//! (`serve.rs`: one room, history, held lines, reload; `failover.rs`: the stream leader killed
//! while every host's client chats). `nats-server` must be installed (`.ci/run` does); the
//! cluster helper is `common/nats.rs`.

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;

mod bridge;
mod checkpoint;
mod door;
mod failover;
mod operators;
mod partition;
mod serve;
mod startup;
mod upgrade;

use std::sync::Arc;

/// A waker for the bridge; the tests read its reports with deadlines instead of polling mio.
fn waker() -> (mio::Poll, Arc<mio::Waker>) {
    let poll = mio::Poll::new().expect("poll");
    let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
    (poll, Arc::new(waker))
}
