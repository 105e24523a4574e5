//! chatd: a multi-process line chat server. See `README.md` and `docs/architecture.md`.

pub mod config;
pub mod protocol;
