//! End-to-end tests of the web page and its WebSocket (docs/web.md) against the real binary:
//! the page and the 404, web clients in the same room as TCP clients (one order, commands,
//! `chatd who`, `status`), WebSocket inside TLS with a throwaway CA, the close codes, and
//! hundreds of web sessions handed to the next worker generation on reload without a
//! disconnect or a lost, repeated or reordered line.
//!
//! The WebSocket clients are tungstenite's over std sockets (`tests/common/web.rs`), with
//! frames written by hand only where no library would send them; TLS comes from the TLS bridge
//! the TLS tests use (Python `ssl`); the reload load reuses the reload tests' fleet (whose web
//! clients are tungstenite's too, read from poll(2)) and control helpers.

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;
// The reload tests' helpers, of which these tests use a part.
#[allow(dead_code)]
#[path = "../reload/control.rs"]
mod control;
#[allow(dead_code)]
#[path = "../reload/fleet.rs"]
mod fleet;
#[path = "../reload/settings.rs"]
mod settings;

mod browser;
mod protocol;
mod reload;
mod session;

use std::net::SocketAddr;
use std::path::Path;

use common::{Server, ServerBuilder};
use settings::{CONTROL_TIMEOUT, SETTLE_TIMEOUT, room_server};

/// Starts `builder`'s server (one plain listen address) with a web listener too; with a
/// certificate, the web listener speaks TLS (`web.tls = true`). The web address is
/// [`web_addr`].
fn start_web(builder: ServerBuilder, tls: Option<(&Path, &Path)>) -> Server {
    let dir = tempfile::tempdir().expect("create temp dir");
    let web = match tls {
        None => "[web]\nlisten = [\"127.0.0.1:0\"]\n".to_string(),
        Some((cert, key)) => format!(
            "[web]\nlisten = [\"127.0.0.1:0\"]\ntls = true\n[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    };
    let config = builder.raw(&web).render(&dir.path().join("control.sock"));
    Server::start_in(dir, &config, 2)
}

/// The web listener of a server started with [`start_web`].
fn web_addr(server: &Server) -> SocketAddr {
    server.listen_addrs()[1]
}
