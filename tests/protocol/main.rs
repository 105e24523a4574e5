//! End-to-end tests of the line protocol (docs/protocol.md): every command and its errors, the
//! configurable chat line, history, joining, and input sanitising — against the real binary,
//! with clients spread over several worker processes wherever the room is involved.
//!
//! `common/room.rs` holds the fixture: a room of clients spread over at least two workers, and
//! expectations on the lines they read. The tests, by subject: `chat_lines.rs` (chat across
//! workers, echo, the configurable chat line, history on join), `commands.rs` (every command
//! and its errors) and `input.rs` (line endings, telnet, invalid UTF-8, escape sequences).

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;

use common::room;

mod chat_lines;
mod commands;
mod input;
