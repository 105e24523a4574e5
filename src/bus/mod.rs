//! The bus between the supervisor (the hub) and its workers.
//!
//! Each worker owns one end of a Unix-domain socketpair created before it was forked; the
//! supervisor holds the other. Nothing lives on disk, so nothing can connect to the bus from
//! outside, and a worker's death shows up as an EOF on exactly its pair.
//!
//! * [`message`]: what travels, as Rust enums: control messages for worker management, room
//!   messages for the hub.
//! * [`frame`]: how a message becomes bytes (length prefix, version byte, postcard body).
//! * [`conn`]: a non-blocking, buffered frame stream for an event loop, with fd passing.
//! * [`handoff`]: what an old worker sends its successor on reload.

pub mod conn;
pub mod frame;
#[cfg(test)]
mod golden;
pub mod handoff;
pub mod message;

pub use conn::BusConn;
pub use message::{
    ConnId, LeaveReason, RoomRequest, RoomUpdate, SessionId, ToHub, ToWorker, WorkerCounters,
    WorkerOrder, WorkerReport,
};
