//! A TLS connection for the client: the handshake, done before the connection is handed out
//! (so a certificate that is not trusted is an error of connecting), then one thread that owns
//! the session and the socket.
//!
//! A rustls session is one state machine for both directions, so it cannot be split into a
//! reading and a writing half like a `TcpStream`. If the reading thread and the sender shared it
//! behind a lock, a send blocked on a full socket would hold the lock and stop the reading — and
//! a server whose client stops reading cuts it off as too slow. So one thread does all the
//! socket I/O, without blocking (mio): it reads and decrypts whenever the server sends, and
//! seals and writes the lines handed to it through a short queue, the two taking turns (at most
//! [`READ_TURN`] bytes are read before queued lines go out), so neither direction holds up the
//! other. The queue is bounded, so a sender ahead of the socket waits, as a blocking write to a
//! plain socket would.

use super::tls::describe;
use super::transport::{FromServer, LineSplitter};
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ClientConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server gets to complete the handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines the sender may queue before it waits for the socket.
const QUEUE: usize = 64;

/// Bytes read from the socket in one turn of the I/O loop before the queued lines get their
/// turn: a server that sends without a pause never holds up what the user sends.
const READ_TURN: usize = 256 * 1024;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// Why a handshake did not complete.
#[derive(Debug)]
pub(super) enum HandshakeError {
    Io(io::Error),
    /// rustls refused it: certificate, protocol version, an alert from the server.
    Tls(rustls::Error),
    Timeout,
    /// The server closed the connection during the handshake.
    Closed,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "handshake failed ({e})"),
            HandshakeError::Tls(e) => f.write_str(&describe(e)),
            HandshakeError::Timeout => write!(
                f,
                "no handshake within {}s (is the server speaking TLS on that port?)",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
            HandshakeError::Closed => {
                f.write_str("the server closed the connection during the handshake")
            }
        }
    }
}

/// Runs the handshake on the (blocking) `stream`, within [`HANDSHAKE_TIMEOUT`].
pub(super) fn handshake(
    stream: &mut TcpStream,
    tls: &mut ClientConnection,
) -> Result<(), HandshakeError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let timed = |e: io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => HandshakeError::Timeout,
        _ => HandshakeError::Io(e),
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HandshakeError::Io)?;
        stream.set_write_timeout(Some(left)).map_err(HandshakeError::Io)?;
        while tls.wants_write() {
            tls.write_tls(stream).map_err(timed)?;
        }
        if !tls.is_handshaking() {
            break;
        }
        if tls.read_tls(stream).map_err(timed)? == 0 {
            return Err(HandshakeError::Closed);
        }
        if let Err(e) = tls.process_new_packets() {
            // rustls queued an alert telling the server why; it may or may not arrive.
            let _ = tls.write_tls(stream);
            return Err(HandshakeError::Tls(e));
        }
    }
    stream.set_read_timeout(None).map_err(HandshakeError::Io)?;
    stream.set_write_timeout(None).map_err(HandshakeError::Io)
}

/// What the sender hands the I/O thread.
enum Outgoing {
    /// Bytes to seal and send (a line with its LF).
    Bytes(Vec<u8>),
    /// Send close_notify after what was queued, then end the TCP stream's sending side.
    Leave,
}

/// The sending side of a TLS connection; the I/O thread ends when it is dropped.
pub(super) struct TlsSender {
    queue: Option<Sender<Outgoing>>,
    waker: Waker,
}

impl TlsSender {
    /// Queues `bytes`; waits while the queue is full. Fails once the connection is gone.
    pub(super) fn send(&self, bytes: Vec<u8>) -> io::Result<()> {
        self.push(Outgoing::Bytes(bytes))
    }

    /// Ends the session's sending side: close_notify, then the TCP FIN.
    pub(super) fn leave(&self) -> io::Result<()> {
        self.push(Outgoing::Leave)
    }

    fn push(&self, what: Outgoing) -> io::Result<()> {
        let gone = || io::Error::new(ErrorKind::BrokenPipe, "the connection is closed");
        let queue = self.queue.as_ref().ok_or_else(gone)?;
        queue.send(what).map_err(|_| gone())?;
        self.waker.wake()
    }
}

impl Drop for TlsSender {
    fn drop(&mut self) {
        // The I/O thread notices the closed queue when it wakes.
        self.queue = None;
        let _ = self.waker.wake();
    }
}

/// Hands the connection (handshake done) to its I/O thread, which passes what the server says
/// to `lines` and ends it with [`FromServer::Closed`].
pub(super) fn start(
    stream: TcpStream,
    tls: ClientConnection,
    lines: Sender<FromServer>,
) -> io::Result<TlsSender> {
    stream.set_nonblocking(true)?;
    let mut socket = mio::net::TcpStream::from_std(stream);
    let poll = Poll::new()?;
    poll.registry().register(&mut socket, SOCKET, Interest::READABLE)?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    let (tx, queue) = bounded(QUEUE);
    let pump = Pump {
        socket,
        tls,
        queue,
        lines,
        received: LineSplitter::default(),
        unsent: Vec::new(),
        leaving: false,
        write_closed: false,
        watching_writable: false,
    };
    thread::spawn(move || pump.run(poll));
    Ok(TlsSender { queue: Some(tx), waker })
}

/// What one turn of reading found.
enum Received {
    /// The server ended the session with close_notify.
    Closed,
    /// Nothing more to read for now.
    Drained,
    /// The turn's budget is spent; the socket may hold more.
    More,
}

/// The I/O thread's state.
struct Pump {
    socket: mio::net::TcpStream,
    tls: ClientConnection,
    queue: Receiver<Outgoing>,
    lines: Sender<FromServer>,
    received: LineSplitter,
    /// Plaintext rustls has not taken yet (its buffer was full).
    unsent: Vec<u8>,
    /// [`Outgoing::Leave`] was taken: close_notify is queued, nothing more is taken.
    leaving: bool,
    write_closed: bool,
    watching_writable: bool,
}

impl Pump {
    fn run(mut self, mut poll: Poll) {
        let end = self.serve(&mut poll);
        self.received.finish(&self.lines);
        let _ = self.lines.send(FromServer::Closed(end.err()));
    }

    /// Moves data both ways until the server ends the session (`Ok`), the connection fails, or
    /// the sender is dropped (`Ok`).
    fn serve(&mut self, poll: &mut Poll) -> io::Result<()> {
        let mut events = Events::with_capacity(4);
        // The handshake's last read may have brought application data too.
        if self.deliver()? {
            return Ok(());
        }
        loop {
            let more = match self.receive()? {
                Received::Closed => return Ok(()),
                Received::Drained => false,
                Received::More => true,
            };
            if !self.send()? {
                return Ok(());
            }
            let writable = self.tls.wants_write();
            if writable != self.watching_writable {
                let interest = if writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                poll.registry().reregister(&mut self.socket, SOCKET, interest)?;
                self.watching_writable = writable;
            }
            // Every wake-up tries both directions; reads and writes that cannot go on return
            // WouldBlock at once. The socket's readiness comes as edges, so while it may hold
            // more to read the poll only looks for a wake-up and returns at once.
            let timeout = if more { Some(Duration::ZERO) } else { None };
            match poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => other?,
            }
        }
    }

    /// Reads, decrypts and passes on what the socket holds, up to [`READ_TURN`] bytes.
    fn receive(&mut self) -> io::Result<Received> {
        let mut read = 0;
        loop {
            if read >= READ_TURN {
                return Ok(Received::More);
            }
            let eof = match self.tls.read_tls(&mut self.socket) {
                Ok(n) => {
                    read += n;
                    n == 0
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Received::Drained),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert telling the server why; it may or may not arrive.
                let _ = self.tls.write_tls(&mut self.socket);
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("TLS: {}", describe(&e)),
                ));
            }
            if self.deliver()? {
                return Ok(Received::Closed);
            }
            if eof {
                return Err(truncated());
            }
        }
    }

    /// Passes on the plaintext rustls holds; `Ok(true)` once it holds the server's close_notify.
    fn deliver(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    if !self.received.push(&buf[..n], &self.lines) {
                        // Nobody reads the lines any more: the client is leaving.
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(truncated()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Seals what is queued and writes it while the socket takes it; `Ok(false)` once the
    /// sender is gone.
    fn send(&mut self) -> io::Result<bool> {
        loop {
            let open = self.take_queued()?;
            self.flush()?;
            if !open {
                return Ok(false);
            }
            // Stop when the socket is full, or when everything taken is written.
            if self.tls.wants_write() || self.unsent.is_empty() {
                return Ok(true);
            }
        }
    }

    /// Hands queued lines to rustls while it takes them; `Ok(false)` once the sender is gone.
    fn take_queued(&mut self) -> io::Result<bool> {
        loop {
            if !self.unsent.is_empty() {
                // rustls takes less than offered when its buffer of sealed records is full (it
                // then wants to write); it fails only once the session has failed.
                let taken = self.tls.writer().write(&self.unsent)?;
                self.unsent.drain(..taken);
                if !self.unsent.is_empty() {
                    return Ok(true);
                }
            }
            if self.leaving {
                return Ok(!matches!(self.queue.try_recv(), Err(TryRecvError::Disconnected)));
            }
            match self.queue.try_recv() {
                Ok(Outgoing::Bytes(bytes)) => self.unsent = bytes,
                Ok(Outgoing::Leave) => {
                    self.leaving = true;
                    self.tls.send_close_notify();
                }
                Err(TryRecvError::Empty) => return Ok(true),
                Err(TryRecvError::Disconnected) => return Ok(false),
            }
        }
    }

    /// Writes sealed records until the socket is full; after close_notify is out, ends the
    /// TCP stream's sending side.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.leaving && !self.write_closed {
            self.write_closed = true;
            self.socket.shutdown(Shutdown::Write)?;
        }
        Ok(())
    }
}

/// The TCP stream ended without close_notify: what came last may be missing.
fn truncated() -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        "TLS: the server closed the connection without close_notify",
    )
}
