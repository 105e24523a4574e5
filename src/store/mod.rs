//! systemd's file descriptor store: what chatd keeps there so that a crash of the supervisor
//! does not lose the room (SPEC §8, docs/architecture.md "Surviving a crash of the supervisor").
//!
//! Under systemd (`NOTIFY_SOCKET` set) the supervisor hands descriptors to systemd with
//! `FDSTORE=1` and a name; when the service is restarted after a crash, systemd passes them back
//! (`LISTEN_FDS`/`LISTEN_FDNAMES`, sd_listen_fds semantics). A stop or a restart asked for by
//! the operator starts clean: the supervisor empties its entries before it exits. Outside
//! systemd every call here is a no-op.
//!
//! Entries are few and fixed (systemd 252 stores descriptors at a cost quadratic in their
//! number): what changes is the content of memory files, rewritten in place ([`snapshot`]) or
//! appended to ([`journal`]).

pub mod bag;
pub mod journal;
mod mapping;
pub mod snapshot;
pub mod table;

use log::debug;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::ffi::OsString;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// `SD_LISTEN_FDS_START`: the first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// The service manager's notification socket, if chatd runs under systemd.
fn notify_socket() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())
}

/// Whether descriptors can be kept in systemd's store at all.
pub fn available() -> bool {
    notify_socket().is_some()
}

/// Sends `text` with `fds` attached to systemd; nothing outside systemd.
fn notify(text: &str, fds: &[RawFd]) -> io::Result<()> {
    let Some(path) = notify_socket() else { return Ok(()) };
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(&addr)?;
    let iov = [IoSlice::new(text.as_bytes())];
    let cmsgs = if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(fds)] };
    let sent = sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)?;
    if sent == text.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "short notification"))
    }
}

/// Keeps `fds` in the store, each under `name`, in one message (systemd does not poll them:
/// `FDPOLL=0`).
pub fn store(name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    notify(&format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n"), &raw)
}

/// Drops every stored entry named `name`.
pub fn remove(name: &str) {
    if let Err(e) = notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]) {
        debug!("fd store: removing {name}: {e}");
    }
}

/// What systemd passed back at start: the entries kept by the previous supervisor, by name.
/// The variables are removed from the environment, so neither the workers nor a re-executed
/// supervisor read them again. Call before any thread is started.
pub fn take_passed() -> Vec<(String, OwnedFd)> {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<RawFd>().ok());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called at the start of the supervisor, before it starts any thread, so no
        // other thread reads the environment meanwhile.
        unsafe { std::env::remove_var(var) };
    }
    let (Some(pid), Some(count)) = (pid, count) else { return Vec::new() };
    if pid != std::process::id() || count <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (LISTEN_FDS_START..LISTEN_FDS_START + count)
        .map(|fd| {
            // SAFETY: systemd passed these descriptors to this process (LISTEN_PID is ours) and
            // nothing else in it owns them: they are taken once, here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(e) = crate::cloexec::set(owned.as_fd()) {
                debug!("fd store: descriptor {fd}: {e}");
            }
            (names.next().unwrap_or("unknown").to_string(), owned)
        })
        .collect()
}
