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

/// The signals in `signals` as a set.
fn set_of(signals: &[c_int]) -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for &signal in signals {
        if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
            set.add(signal);
        }
    }
    set
}

/// Holds `signals` back in the calling thread (they stay pending, also across an exec) or lets
/// them through again.
pub fn block(signals: &[c_int], blocked: bool) -> nix::Result<()> {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    let how = if blocked { SigmaskHow::SIG_BLOCK } else { SigmaskHow::SIG_UNBLOCK };
    pthread_sigmask(how, Some(&set_of(signals)), None)
}

/// Runs `f` (which starts threads) with `signals` blocked, so the threads it starts never take
/// them: they always reach the thread that runs the event loop. A supervisor about to exec
/// blocks them there, and they wait for the new image instead of landing, unseen, in a thread
/// of the old one.
pub fn in_threads_blocked<T>(signals: &[c_int], f: impl FnOnce() -> T) -> T {
    let mut old = nix::sys::signal::SigSet::empty();
    let blocked = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set_of(signals)),
        Some(&mut old),
    );
    let result = f();
    if blocked.is_ok() {
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
    }
    result
}
