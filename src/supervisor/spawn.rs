//! Starting a worker process: fork + exec of our own binary.
//!
//! Exec (rather than a bare fork) means a worker always runs the binary that is on disk when it
//! starts, so a reload after a package upgrade brings the new code in. The worker inherits
//! exactly two kinds of descriptors, named on its command line: its end of a fresh bus
//! socketpair, and its slot's listening sockets. Everything else is close-on-exec.

use crate::bad_frame::Peer;
use crate::bus::{BusConn, ToWorker, WorkerOrder};
use crate::cloexec;
use crate::listener::{Kind, ListenFd};
use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// A freshly started worker and the supervisor's end of its bus.
pub struct Spawned {
    pub pid: u32,
    pub conn: BusConn,
}

/// Starts the worker for `slot` on its `listeners`, each taking connections of the kind beside
/// it in `kinds`; `setup` is its first bus frame.
pub fn spawn_worker(
    exe: &Path,
    slot: usize,
    generation: u64,
    listeners: &[Socket],
    kinds: &[Kind],
    setup: WorkerOrder,
    keep_sessions: bool,
) -> io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let bus_fd = theirs.as_raw_fd();
    let mut inherit: Vec<RawFd> = listeners.iter().map(|s| s.as_raw_fd()).collect();
    let mut command = Command::new(exe);
    command
        .arg("worker")
        .args(["--slot", &slot.to_string()])
        .args(["--generation", &generation.to_string()])
        .args(["--bus-fd", &bus_fd.to_string()]);
    for (&fd, &kind) in inherit.iter().zip(kinds) {
        command.args(["--listen-fd", &ListenFd { fd, kind }.to_string()]);
    }
    if keep_sessions {
        command.arg("--keep-sessions");
    }
    inherit.push(bus_fd);
    // Only the supervisor talks to systemd (NotifyAccess=main); the workers must not try.
    command
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null());
    let keep_open = move || {
        for &fd in &inherit {
            // SAFETY: `fd` is open in the child: the fork copied the parent's descriptors, and
            // the parent keeps the listeners and `theirs` open until `spawn` returns.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            cloexec::clear(fd)?;
        }
        Ok(())
    };
    // SAFETY: `keep_open` runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: `cloexec::clear` is two fcntl calls, and `inherit` was allocated
    // before the fork.
    unsafe { command.pre_exec(keep_open) };
    // The `Child` is dropped, which neither waits nor kills: the supervisor reaps by pid.
    let pid = command.spawn()?.id();
    drop(theirs);
    ours.set_nonblocking(true)?;
    let peer = Peer::Worker { slot, pid };
    let mut conn = BusConn::new(mio::net::UnixStream::from_std(ours), peer);
    conn.send(&ToWorker::Control(setup));
    Ok(Spawned { pid, conn })
}
