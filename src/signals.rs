//! Unix signals as event-loop events.
//!
//! A signal handler may do almost nothing, so the handlers installed by `signal-hook` only set a
//! flag and write a byte to a pipe registered with the event loop. The loop wakes up, drains the
//! pipe and reads the flags; all real work happens in ordinary code.

use mio::net::UnixStream;
use signal_hook::low_level::pipe;
use std::io::{self, Read};
use std::os::raw::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Signals {
    wake: UnixStream,
    flags: Vec<(c_int, Arc<AtomicBool>)>,
}

impl Signals {
    /// Starts catching `signals`.
    pub fn new(signals: &[c_int]) -> io::Result<Signals> {
        let (wake, notify) = std::os::unix::net::UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let mut flags = Vec::with_capacity(signals.len());
        for &signal in signals {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal, flag.clone())?;
            pipe::register(signal, notify.try_clone()?)?;
            flags.push((signal, flag));
        }
        Ok(Signals { wake: UnixStream::from_std(wake), flags })
    }

    /// The pipe to register with the event loop (readable when a signal arrived).
    pub fn source(&mut self) -> &mut UnixStream {
        &mut self.wake
    }

    /// The signals that arrived since the last call, in the order they were registered.
    pub fn pending(&mut self) -> Vec<c_int> {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(signal, _)| *signal)
            .collect()
    }
}

/// Ignores `signal` in this process (a worker leaves SIGINT and SIGHUP to the supervisor: a
/// Ctrl-C in a terminal reaches the whole process group).
pub fn ignore(signal: nix::sys::signal::Signal) -> nix::Result<()> {
    // SAFETY: installing SIG_IGN does not run any code in signal context.
    unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) }.map(|_| ())
}
