//! The client-facing line protocol: bytes in, lines and commands out, and the text of every line
//! the server writes. Pure code with no I/O, so it is unit- and property-tested on its own.

pub mod command;
pub mod decoder;
pub mod sanitize;
pub mod template;
