//! One client connection inside a worker: its socket, its input decoder and its output queue.
//!
//! Output is queued per client and written once per event-loop turn, however many lines arrived
//! in between, so a busy room costs one `write` per client per turn rather than one per line.
//! Buffers are allocated while in use and given back when drained, which keeps an idle
//! connection small.

use crate::bus::message::{ConnId, SessionId};
use crate::protocol::decoder::LineDecoder;
use crate::worker::kept::Tracked;
use crate::worker::rate::TokenBucket;
use crate::worker::transport::Transport;
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Output capacity kept after a flush; larger buffers are freed at once, and
/// [`Client::release_idle_buffers`] frees the rest once the client is quiet.
const KEEP_CAPACITY: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted on a layered listener, its transport still opening (a TLS handshake): not
    /// known to the hub yet.
    Opening,
    /// Accepted; waiting for the hub to admit it.
    Joining,
    /// In the room.
    Live,
    /// Asked to leave (quit, or closed its side); still gets room lines and answers until the
    /// hub confirms, but its input is no longer read.
    Leaving,
    /// Just handed over from the previous worker; back in the room (as Live or Leaving) when
    /// the hub has replayed what it missed in transit.
    Resuming { leaving: bool },
    /// Leaving: the last output is being flushed; input is discarded. After the deadline the
    /// socket is dropped regardless.
    Closing { deadline: Instant, write_shut: bool },
}

pub use super::transport::Input;

pub struct Client {
    pub stream: TcpStream,
    /// What lies between the socket and the lines: nothing, or layers such as TLS.
    pub transport: Transport,
    pub conn: ConnId,
    pub session: Option<SessionId>,
    pub phase: Phase,
    pub decoder: LineDecoder,
    pub bucket: Option<TokenBucket>,
    pub last_line: Instant,
    /// The client closed its side; its last lines are still being processed.
    pub eof: bool,
    /// Edge-triggered readiness: the socket may still hold unread bytes.
    pub can_read: bool,
    /// Waiting for the rate limiter; a timer will resume it.
    pub throttled: bool,
    /// Already on the worker's list of clients to flush this turn.
    pub flush_queued: bool,
    /// The hub has been told this session left (or it never joined).
    pub left: bool,
    /// In the room: where its share of the worker's shared room buffer starts. `None` while
    /// joining, resuming or closing.
    pub room_from: Option<usize>,
    out: Vec<u8>,
    out_pos: usize,
    /// The last byte written to the socket was not the end of a line.
    mid_line: bool,
    /// Kept through a crash of the supervisor: how far its output got (`kept`).
    pub tracked: Option<Box<Tracked>>,
}

impl Client {
    /// A client; `last_line` starts now, which for a connection still opening is when its
    /// opening started.
    pub fn new(
        stream: TcpStream,
        transport: Transport,
        conn: ConnId,
        max_line_bytes: usize,
    ) -> Client {
        let now = Instant::now();
        let phase = match transport {
            Transport::Layered(_) => Phase::Opening,
            Transport::Plain => Phase::Joining,
        };
        Client {
            stream,
            transport,
            conn,
            session: None,
            phase,
            decoder: LineDecoder::new(max_line_bytes),
            bucket: None,
            last_line: now,
            eof: false,
            can_read: true,
            throttled: false,
            flush_queued: false,
            left: false,
            room_from: None,
            out: Vec::new(),
            out_pos: 0,
            mid_line: false,
            tracked: None,
        }
    }

    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Queues raw bytes (already CRLF-terminated lines).
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Queues one line, adding CRLF.
    pub fn queue_line(&mut self, line: &str) {
        self.out.reserve(line.len() + 2);
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// The last byte written was not the end of a line.
    pub fn mid_line(&self) -> bool {
        self.mid_line
    }

    /// Bytes waiting to be written.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos + self.transport.unsent()
    }

    /// Drops queued output except the rest of a line already partly written, so a final notice
    /// starts on a line of its own. The dropped backlog's memory goes back at once: a client cut
    /// as too slow lingers for seconds, and hundreds of them must not keep theirs meanwhile.
    pub fn discard_output(&mut self) {
        let rest = &self.out[self.out_pos..];
        let keep = if self.mid_line {
            rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1)
        } else {
            0
        };
        self.out = rest[..keep].to_vec();
        self.out_pos = 0;
        if let Some(tracked) = self.tracked.as_mut() {
            let written = tracked.written;
            tracked.marks.retain(|m| m.start < written);
        }
        self.transport.discard_unsent();
    }

    /// Gives back an empty output buffer, so a connection that is merely open costs little.
    pub fn release_idle_buffers(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = Vec::new();
        }
        self.transport.release_idle_buffers();
    }

    /// Takes the unsent output (for a hand-off), and whether it starts mid-line.
    pub fn take_output(&mut self) -> (Vec<u8>, bool) {
        let mut out = std::mem::take(&mut self.out);
        out.drain(..self.out_pos);
        self.out_pos = 0;
        (out, self.mid_line)
    }

    /// Output carried over from another worker, possibly starting mid-line.
    pub fn restore_output(&mut self, mut output: Vec<u8>, mid_line: bool) {
        self.out.append(&mut output);
        self.mid_line = mid_line;
    }

    /// Writes this client's queued bytes, then `share` (its part of the shared room buffer),
    /// with as few syscalls as the socket allows; what the socket does not take is queued.
    /// Returns the bytes written.
    pub fn flush_with(&mut self, share: &[u8]) -> io::Result<usize> {
        if let Transport::Layered(layered) = &mut self.transport {
            let own = &self.out[self.out_pos..];
            let closing = matches!(self.phase, Phase::Closing { .. });
            let sent = Transport::flush_layered(layered, &mut self.stream, own, share, closing)?;
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > KEEP_CAPACITY {
                self.out = Vec::new();
            }
            return Ok(sent);
        }
        let mut shared = 0;
        let mut sent = 0;
        loop {
            let own = &self.out[self.out_pos..];
            let rest = &share[shared..];
            if own.is_empty() && rest.is_empty() {
                break;
            }
            let written = if own.is_empty() {
                self.stream.write(rest)
            } else {
                self.stream.write_vectored(&[IoSlice::new(own), IoSlice::new(rest)])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) if n <= own.len() => {
                    sent += n;
                    self.mid_line = own[n - 1] != b'\n';
                    self.out_pos += n;
                }
                Ok(n) => {
                    sent += n;
                    self.mid_line = rest[n - own.len() - 1] != b'\n';
                    shared += n - own.len();
                    self.out_pos = self.out.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    self.out.extend_from_slice(rest);
                    return Ok(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        Ok(sent)
    }

    /// Drops the bytes already written once they are half the queue or more. A client that
    /// keeps up without ever quite catching up never empties its queue, and without this would
    /// hold everything it was sent since it last did, however small its backlog. Each byte is
    /// moved at most once more on average.
    fn compact(&mut self) {
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// One read into `scratch`, through the transport into the decoder.
    pub fn read_input(&mut self, scratch: &mut [u8]) -> io::Result<Input> {
        let input = self.transport.read(&mut self.stream, scratch, &mut self.decoder)?;
        if matches!(input, Input::Empty | Input::Eof) {
            self.can_read = false;
        }
        Ok(input)
    }

    /// Reads and throws away whatever the client sends while its connection is closing, so the
    /// final close does not turn into a reset that could destroy our last lines in flight.
    /// Returns true at EOF.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_read = false;
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Starts closing: flush what is queued, then send FIN.
    pub fn start_closing(&mut self, deadline: Instant) {
        if !self.is_closing() {
            self.phase = Phase::Closing { deadline, write_shut: false };
        }
    }

    /// Gives a closing connection until `deadline` (if that is later) to flush.
    pub fn extend_closing(&mut self, deadline: Instant) {
        if let Phase::Closing { deadline: current, write_shut } = self.phase {
            self.phase = Phase::Closing { deadline: current.max(deadline), write_shut };
        }
    }

    /// Bytes the peer has not acknowledged yet (our send queue).
    pub fn unacked(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer we pass.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if rc < 0 { 0 } else { n.max(0) as usize }
    }

    /// Once everything is written, half-close our side. Returns true when it did.
    pub fn shut_write_if_flushed(&mut self) -> bool {
        if let Phase::Closing { deadline, write_shut: false } = self.phase {
            if self.backlog() == 0 {
                let _ = self.stream.shutdown(Shutdown::Write);
                self.phase = Phase::Closing { deadline, write_shut: true };
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client cut as too slow keeps only the rest of the line its peer is in the middle of,
    /// and none of the memory its backlog took.
    #[test]
    fn discarded_output_keeps_the_partial_line_and_frees_the_buffer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(ours);
        let mut client = Client::new(stream, Transport::Plain, ConnId(1), 1024);
        let line = format!("{}\r\n", "x".repeat(998));
        let lines = 16 << 10;
        for _ in 0..lines {
            client.queue(line.as_bytes());
        }
        client.flush_with(&[]).unwrap();
        let written = lines * line.len() - client.backlog();
        assert!(written > 0 && client.backlog() > 0, "the peer never reads: {written} written");

        client.discard_output();
        let rest_of_line = (line.len() - written % line.len()) % line.len();
        assert_eq!(client.backlog(), rest_of_line);
        assert!(client.out.capacity() <= rest_of_line, "{} kept", client.out.capacity());
        client.queue_line("* disconnected: too slow");
        let mut tail = line[line.len() - rest_of_line..].to_owned();
        tail += "* disconnected: too slow\r\n";
        assert_eq!(&client.out[client.out_pos..], tail.as_bytes());
    }
}
