//! A non-blocking, buffered frame stream over one end of a bus socketpair.
//!
//! Written for edge-triggered event loops: `fill` reads until the socket would block, `flush`
//! writes until it would block, and both sides keep their bytes in plain buffers, so a peer that
//! is momentarily slow costs memory (bounded by the callers) rather than a stalled loop.

use super::frame::{self, FrameError};
use mio::net::UnixStream;
use serde::{Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};

/// How much one `fill` reads before yielding, so one busy peer cannot starve the rest of the
/// event loop.
const FILL_BUDGET: usize = 4 * 1024 * 1024;

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
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl BusConn {
    pub fn new(stream: UnixStream) -> BusConn {
        BusConn { stream, rbuf: Vec::new(), rpos: 0, wbuf: Vec::new(), wpos: 0 }
    }

    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Queues one message.
    pub fn send<T: Serialize>(&mut self, msg: &T) {
        frame::encode_into(msg, &mut self.wbuf);
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
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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

    /// Reads what the peer has sent, up to the read budget.
    pub fn fill(&mut self) -> io::Result<Fill> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        let mut read = 0;
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < 16 * 1024 {
                self.rbuf.reserve(64 * 1024);
            }
            let len = self.rbuf.len();
            let spare = self.rbuf.capacity() - len;
            self.rbuf.resize(len + spare, 0);
            let result = self.stream.read(&mut self.rbuf[len..]);
            match result {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    return Ok(Fill::Closed);
                }
                Ok(n) => {
                    self.rbuf.truncate(len + n);
                    read += n;
                    if read >= FILL_BUDGET {
                        return Ok(Fill::More);
                    }
                }
                Err(e) => {
                    self.rbuf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(Fill::Drained),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// Next complete message from what `fill` read.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match frame::decode(&self.rbuf[self.rpos..])? {
            Some((msg, used)) => {
                self.rpos += used;
                Ok(Some(msg))
            }
            None => {
                // Keep the unread tail at the front so the buffer does not creep.
                if self.rpos > 0 {
                    self.rbuf.drain(..self.rpos);
                    self.rpos = 0;
                }
                Ok(None)
            }
        }
    }
}
