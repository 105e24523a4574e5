//! A bag of sockets: a Unix datagram socket pair whose receive queue holds client sockets as
//! `SCM_RIGHTS` messages (up to [`PER_MESSAGE`] descriptors each). Its receiving end is one
//! entry in systemd's descriptor store however many sockets it holds, which keeps them open
//! while no chatd process does (systemd 252 stores entries at a cost quadratic in their number:
//! one entry per client would not do). The worker keeps the sending end and adds each new
//! client to the bag; the supervisor started after a crash takes every socket back out.
//!
//! A socket in a bag stays open as long as the bag does: a worker ending a session shuts the
//! socket down (`shutdown`), since closing its own descriptor no longer ends the connection.

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `SCM_MAX_FD`: the most descriptors the kernel takes in one message.
pub const PER_MESSAGE: usize = 253;

/// The worker's side of a bag: the sending end, and the receiving end until it is stored.
pub struct Bag {
    sender: OwnedFd,
    receiver: Option<OwnedFd>,
    /// Messages put in so far.
    pub messages: usize,
}

impl Bag {
    pub fn new() -> io::Result<Bag> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (receiver, sender) = socketpair(AddressFamily::Unix, SockType::Datagram, None, flags)?;
        // Nothing is ever sent the other way.
        nix::sys::socket::shutdown(receiver.as_raw_fd(), nix::sys::socket::Shutdown::Write)?;
        Ok(Bag { sender, receiver: Some(receiver), messages: 0 })
    }

    /// The receiving end, to be stored (once).
    pub fn take_receiver(&mut self) -> Option<OwnedFd> {
        self.receiver.take()
    }

    /// Puts `fds` in the bag, [`PER_MESSAGE`] per message. Fails (`WouldBlock`) when the bag's
    /// queue is full: then a new bag is due.
    pub fn put(&mut self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        for chunk in fds.chunks(PER_MESSAGE) {
            let raw: Vec<RawFd> = chunk.iter().map(AsRawFd::as_raw_fd).collect();
            let iov = [IoSlice::new(b"s")];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(self.sender.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None)?;
            self.messages += 1;
        }
        Ok(())
    }
}

/// The socket's inode: what identifies it in every bag it is in.
pub fn inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd).map_or(0, |st| st.st_ino)
}

/// Takes every socket out of a stored bag (its receiving end).
pub fn empty(bag: &OwnedFd) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; PER_MESSAGE]);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        let Ok(msg) = recvmsg::<()>(bag.as_raw_fd(), &mut iov, Some(&mut space), flags) else {
            return fds;
        };
        let mut got = false;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    got = true;
                    // SAFETY: the kernel just installed these descriptors in this process for
                    // this message; nothing else owns them.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        if msg.bytes == 0 && !got {
            return fds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sockets_put_in_come_back_out() {
        let mut bag = Bag::new().unwrap();
        let files: Vec<std::fs::File> =
            (0..300).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        bag.put(&fds).unwrap();
        bag.put(&fds[..1]).unwrap();
        assert_eq!(bag.messages, 3);
        let receiver = bag.take_receiver().unwrap();
        drop(bag);
        assert_eq!(empty(&receiver).len(), 301);
        assert!(empty(&receiver).is_empty());
    }
}
