//! Deadlines and the room server shared by the reload tests and the binaries that borrow their
//! helpers (`tests/web/`, `tests/upgrade/`).

use std::time::Duration;

use crate::common::ServerBuilder;

/// How long a `chatd reload` / `chatd status` may take before the test gives up.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for the room to settle after a reload (old workers gone, new ones listed).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A server for room tests: no history on join (a client's first line is its welcome), no rate
/// limit (fast senders are not slowed down).
pub fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}
