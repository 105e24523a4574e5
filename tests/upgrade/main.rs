//! The supervisor's in-place upgrade end to end (docs/architecture.md, "In-place upgrade"): a
//! new binary renamed over the running one as a package manager does, and `chatd reload`
//! re-executing the supervisor from it under load; binaries that fail or hang not used; the
//! previous release upgrading to this one.
//!
//! A test binary of its own, not part of `tests/reload/`: these tests build chatd twice more
//! with cargo, which would starve the reload tests whose heartbeats are timed tightly if they ran
//! beside them. The reload tests' helpers are borrowed.

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../reload/control.rs"]
mod control;
#[allow(dead_code)]
#[path = "../reload/fleet.rs"]
mod fleet;
#[allow(dead_code)]
#[path = "../reload/room.rs"]
mod room;
#[path = "../reload/settings.rs"]
mod settings;

mod upgrade;

use settings::{CONTROL_TIMEOUT, SETTLE_TIMEOUT, room_server};
