//! Close-on-exec, the one descriptor flag chatd sets by hand.
//!
//! Every descriptor chatd opens is close-on-exec from the start (std, mio and nix ask for it),
//! so nothing leaks into a process it starts. Two kinds cross an exec on purpose: a worker's bus
//! end and its slot's listening sockets. The supervisor clears the flag on exactly those in the
//! forked child just before exec, and the worker sets it again once it has adopted them.

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use std::os::fd::BorrowedFd;

/// Closes `fd` on exec.
pub fn set(fd: BorrowedFd<'_>) -> nix::Result<()> {
    update(fd, true)
}

/// Keeps `fd` open across exec. Async-signal-safe (two `fcntl` calls, no allocation), so it may
/// run between fork and exec.
pub fn clear(fd: BorrowedFd<'_>) -> nix::Result<()> {
    update(fd, false)
}

fn update(fd: BorrowedFd<'_>, cloexec: bool) -> nix::Result<()> {
    let mut flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, cloexec);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD");
        FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn clears_and_sets_the_flag() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert!(is_cloexec(a.as_fd()), "std opens descriptors close-on-exec");
        clear(a.as_fd()).expect("clear");
        assert!(!is_cloexec(a.as_fd()));
        set(a.as_fd()).expect("set");
        assert!(is_cloexec(a.as_fd()));
    }
}
