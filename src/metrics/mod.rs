//! Prometheus metrics (`[metrics] listen`, docs/operations.md "Metrics").
//!
//! What is counted, and where:
//!
//! * each worker counts what happens on its own connections (accepts, bytes, deliveries, rate
//!   limiting) as plain integers in its single-threaded loop and reports the running totals
//!   with every heartbeat (`bus::message::WorkerCounters`);
//! * the hub counts what happens to the room (lines by kind, who left and why, who was turned
//!   away) in [`RoomCounters`];
//! * the supervisor counts reloads and worker restarts, and keeps the last report of every
//!   worker that is gone, so no total ever goes back when a worker exits, is killed or is
//!   replaced by a reload.
//!
//! Once a second the supervisor puts all of it in a [`Snapshot`] and hands it to the
//! [`Endpoint`], which answers `GET /metrics` on threads of its own, rendering the snapshot
//! in the Prometheus text format with `prometheus-client`. Not on the supervisor's event
//! loop: the loop runs the room, and an HTTP client that is slow, stuck or hostile must never
//! delay it, not even by one read. Handing over a snapshot (a pointer swap under a lock held for
//! nothing else) keeps the two apart: the responder never asks the supervisor anything.

mod counters;
mod exposition;
mod http;

pub use counters::{
    ClusterNumbers, Disconnect, Histogram, LineKind, Rejection, RoomCounters, Snapshot,
};
pub use exposition::{CONTENT_TYPE, render};
pub use http::Endpoint;
