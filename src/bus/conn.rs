//! A non-blocking, buffered frame stream over a Unix stream socket, with descriptor passing.
//!
//! Written for edge-triggered event loops: `fill` reads until the socket would block, `flush`
//! writes until it would block, and both sides keep their bytes in plain buffers, so a peer that
//! is momentarily slow costs memory (bounded by the callers) rather than a stalled loop.
//!
//! A frame may carry file descriptors (`SCM_RIGHTS`): the supervisor hands a worker the end of a
//! hand-off channel this way, and an old worker hands each client socket to its successor.
//! Descriptors travel with the first byte of their frame, so by the time a reader has the whole
//! frame it has its descriptors too; they are queued in arrival order and taken with
//! [`BusConn::take_fd`]. A process at its open-files limit cannot receive a descriptor: the
//! kernel drops it and flags the read (`MSG_CTRUNC`), and its place in the queue is kept empty,
//! so the frame it came with finds no descriptor rather than the next frame's.
//!
//! Each connection knows its [`Peer`]: a frame that cannot be read is handled by the one
//! policy of [`crate::bad_frame`], which names that peer, and the connection shuts itself down.

use super::frame;
use crate::bad_frame::{BadFrame, Peer};
use mio::net::UnixStream;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How much one `fill` reads before yielding, so one busy peer cannot starve the rest of the
/// event loop (see [`BusConn::with_fill_budget`]).
const FILL_BUDGET: usize = 4 * 1024 * 1024;
/// Initial read buffer; it grows when a frame does not fit.
const READ_BUFFER: usize = 64 * 1024;
/// Descriptors accepted per read (the kernel delivers at most what one sendmsg attached).
const MAX_FDS_PER_READ: usize = 64;

/// Result of reading from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// Everything available was read (the socket would block).
    Drained,
    /// The read budget ran out; call again on the next loop turn.
    More,
    /// The peer closed its end.
    Closed,
}

pub struct BusConn {
    stream: UnixStream,
    peer: Peer,
    /// A bad frame arrived: nothing more is read from this peer.
    broken: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Descriptors to attach when the write position reaches the given offset of `wbuf`.
    out_fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Received descriptors in arrival order; `None` for one the kernel could not deliver.
    in_fds: VecDeque<Option<OwnedFd>>,
    fill_budget: usize,
}

/// What a connection holds besides its socket: the bytes read but not yet taken as frames and
/// the bytes queued but not yet written. The supervisor carries them across the exec of an
/// upgrade (`supervisor::upgrade`), so no frame is lost or cut on either side of the bus.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parked {
    pub unread: Vec<u8>,
    pub unsent: Vec<u8>,
}

/// A connection cannot be parked while descriptors wait in it (they cannot be written down).
#[derive(Debug, PartialEq, Eq)]
pub struct DescriptorsInFlight;

impl BusConn {
    pub fn new(stream: UnixStream, peer: Peer) -> BusConn {
        BusConn {
            stream,
            peer,
            broken: false,
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            out_fds: VecDeque::new(),
            in_fds: VecDeque::new(),
            fill_budget: FILL_BUDGET,
        }
    }

    /// A connection whose `fill` stops after `budget` bytes. A worker reads the room in small
    /// bites: everything it reads in one turn goes out to every client before the next read,
    /// so a burst (a thousand joins at once) reaches clients as a stream, not as one lump
    /// bigger than their socket buffers.
    pub fn with_fill_budget(stream: UnixStream, peer: Peer, budget: usize) -> BusConn {
        BusConn { fill_budget: budget, ..BusConn::new(stream, peer) }
    }

    /// A connection that goes on where a parked one stopped, over the same socket.
    pub fn resume(stream: UnixStream, peer: Peer, parked: Parked) -> BusConn {
        let mut conn = BusConn::new(stream, peer);
        conn.rlen = parked.unread.len();
        conn.rbuf = parked.unread;
        conn.wbuf = parked.unsent;
        conn
    }

    /// Its buffered bytes, to resume it elsewhere; refused while descriptors are queued either
    /// way (received and not taken, or waiting to be sent).
    pub fn park(&self) -> Result<Parked, DescriptorsInFlight> {
        if !self.out_fds.is_empty() || !self.in_fds.is_empty() {
            return Err(DescriptorsInFlight);
        }
        Ok(Parked {
            unread: self.rbuf[self.rpos..self.rlen].to_vec(),
            unsent: self.wbuf[self.wpos..].to_vec(),
        })
    }

    /// The socket's descriptor number.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Queues one message. One that would be over the frame limit is not sent but logged:
    /// every sender splits what can be long, so this is a bug, and dropping one message is
    /// better than a peer that drops the whole connection.
    pub fn send<T: Serialize>(&mut self, msg: &T) {
        if let Err(e) = frame::encode_into(msg, &mut self.wbuf) {
            log::error!("bus: {e}");
        }
    }

    /// Queues one message that carries descriptors (they are closed here once sent).
    pub fn send_with_fds<T: Serialize>(&mut self, msg: &T, fds: Vec<OwnedFd>) {
        let at = self.wbuf.len();
        match frame::encode_into(msg, &mut self.wbuf) {
            Ok(()) => self.out_fds.push_back((at, fds)),
            Err(e) => log::error!("bus: {e}"),
        }
    }

    /// Queues an already encoded frame (a broadcast is encoded once for all peers).
    pub fn send_encoded(&mut self, frame: &[u8]) {
        self.wbuf.extend_from_slice(frame);
    }

    /// Bytes queued but not yet written.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes as much as the socket takes. Returns true when nothing is left queued.
    pub fn flush(&mut self) -> io::Result<bool> {
        while self.wpos < self.wbuf.len() {
            let result = match self.out_fds.front() {
                Some((at, fds)) if *at == self.wpos => {
                    // Up to the next frame with descriptors: each sendmsg carries one frame's.
                    let end = self.out_fds.get(1).map_or(self.wbuf.len(), |(next, _)| *next);
                    let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
                    let iov = [IoSlice::new(&self.wbuf[self.wpos..end])];
                    let cmsg = [ControlMessage::ScmRights(&raw)];
                    sendmsg::<()>(self.stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                        .map_err(io::Error::from)
                }
                Some((at, _)) => {
                    let end = *at;
                    write_plain(&self.stream, &self.wbuf[self.wpos..end])
                }
                None => write_plain(&self.stream, &self.wbuf[self.wpos..]),
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if self.out_fds.front().is_some_and(|(at, _)| *at == self.wpos) {
                        // Sent: our copies of the descriptors close here.
                        self.out_fds.pop_front();
                    }
                    self.wpos += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => self.refuse_frame(),
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            // A burst can leave a large buffer behind; give it back once idle.
            if self.wbuf.capacity() > 1024 * 1024 {
                self.wbuf.shrink_to(64 * 1024);
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// The kernel refused the descriptors of the frame at the write position (`ETOOMANYREFS`:
    /// the user has more in flight than its open-files limit, e.g. sockets kept in bags): that
    /// frame is dropped, its descriptors closed, and the connection goes on, since the peer is
    /// still there and nothing of the frame was written.
    fn refuse_frame(&mut self) {
        let end = self.out_fds.get(1).map_or(self.wbuf.len(), |(next, _)| *next);
        log::warn!(
            "bus: a frame's descriptors were refused (too many in flight); {} bytes dropped",
            end - self.wpos
        );
        self.out_fds.pop_front();
        self.wpos = end;
    }

    /// Reads what the peer has sent, up to the read budget.
    pub fn fill(&mut self) -> io::Result<Fill> {
        if self.broken {
            return Ok(Fill::Closed);
        }
        let mut read = 0;
        loop {
            self.make_room();
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_PER_READ]);
            let mut iov = [IoSliceMut::new(&mut self.rbuf[self.rlen..])];
            let result = recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match result {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN) => return Ok(Fill::Drained),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let bytes = msg.bytes;
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                // Descriptors came with this read and none could be installed (every frame
                // carries one): the frame will find its place empty.
                log::warn!(
                    "bus: a descriptor passed to this process was lost (out of descriptors?)"
                );
                self.in_fds.push_back(None);
            } else if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        // SAFETY: the kernel just installed these descriptors for us.
                        self.in_fds.extend(
                            fds.into_iter().map(|fd| Some(unsafe { OwnedFd::from_raw_fd(fd) })),
                        );
                    }
                }
            }
            if bytes == 0 {
                return Ok(Fill::Closed);
            }
            self.rlen += bytes;
            read += bytes;
            if read >= self.fill_budget {
                return Ok(Fill::More);
            }
        }
    }

    /// Keeps free space at the end of the read buffer, moving unread bytes to the front and
    /// growing the buffer when a large frame needs it.
    fn make_room(&mut self) {
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        }
        if self.rbuf.len() - self.rlen >= READ_BUFFER / 4 {
            return;
        }
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        if self.rbuf.len() - self.rlen < READ_BUFFER / 4 {
            let size = (self.rbuf.len() * 2).max(READ_BUFFER);
            self.rbuf.resize(size, 0);
        }
    }

    /// Next complete message from what `fill` read.
    ///
    /// A frame that cannot be read (malformed, oversized, another version) is logged with the
    /// peer and shuts the connection down: the peer sees it closed, this side reads nothing
    /// more from it, and the caller drops the peer as it would on EOF.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, BadFrame> {
        if self.broken {
            return Ok(None);
        }
        match frame::decode(&self.rbuf[self.rpos..self.rlen]) {
            Ok(Some((msg, used))) => {
                self.rpos += used;
                Ok(Some(msg))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.broken = true;
                self.rpos = 0;
                self.rlen = 0;
                self.in_fds.clear();
                // Already closed by the peer, or about to be dropped: either way it is over.
                let _ = self.stream.shutdown(Shutdown::Both);
                Err(BadFrame::new(&self.peer, e))
            }
        }
    }

    /// The next descriptor that arrived with a frame; `None` when the kernel could not deliver
    /// it (or none came).
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.in_fds.pop_front().flatten()
    }

    /// Every descriptor received and not taken yet, in arrival order; `None` for one the kernel
    /// could not deliver.
    pub fn take_all_fds(&mut self) -> Vec<Option<OwnedFd>> {
        self.in_fds.drain(..).collect()
    }
}

fn write_plain(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    use std::io::Write;
    (&*stream).write(bytes)
}

#[cfg(test)]
mod tests;
