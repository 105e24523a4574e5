//! Load for the reload tests: a [`Fleet`] of a thousand or more clients (line clients, or
//! WebSocket clients spoken by tungstenite, one line per text message), read by a few poll(2)
//! threads that classify every line as it arrives ([`Tally`]) instead of keeping it, so a
//! 2-core machine can follow them all; [`connect_welcomed`] for loops that keep connecting
//! while reloads run; [`StopOnDrop`] to end such background loops even when a test panics.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::{WebSocket, WebSocketConfig};

use crate::common::*;

/// Reader threads (each client belongs to one, `index % READERS`).
const READERS: usize = 4;

/// What one fleet client has seen, classified as it arrives (nothing else is kept, so a
/// thousand clients reading thousands of lines stay cheap).
#[derive(Default)]
pub struct Tally {
    /// `u<i>` for the original clients, which rename themselves; `None` for late joiners.
    pub want_nick: Option<String>,
    /// From the welcome line.
    pub nick: Option<String>,
    /// Read `* guest-N is now known as u<i>` for itself.
    pub renamed: bool,
    /// Read `* you are already u<i>` (its nick survived the reloads).
    pub already: bool,
    /// The load chat lines, in arrival order, as `sender << 20 | counter`.
    pub chats: Vec<u32>,
    /// `final` marker lines read.
    pub finals: usize,
    /// How the connection ended, if it did.
    pub closed: Option<String>,
    /// Lines that have no business arriving (kept up to a few).
    pub unexpected: Vec<String>,
    pub unexpected_count: usize,
}

impl Tally {
    fn odd(&mut self, why: &str, line: &str) {
        self.unexpected_count += 1;
        if self.unexpected.len() < 5 {
            self.unexpected.push(format!("{why}: {line:?}"));
        }
    }

    /// Classifies one line; see the rules in the doc comment of
    /// `handoff::reload_under_load_loses_nothing`.
    fn line(&mut self, line: &str) {
        let Some(nick) = self.nick.clone() else {
            match parse_welcome(line) {
                Some((n, _)) => self.nick = Some(n),
                None => self.odd("first line is not a welcome", line),
            }
            return;
        };
        if let Some(c) = parse_chat(line) {
            if let Some(rest) = c.text.strip_prefix("m ") {
                let parsed = rest
                    .split_once(' ')
                    .and_then(|(s, n)| Some((s.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
                match parsed {
                    Some((s, n)) if c.nick == format!("u{s}") && s < 1024 && n < (1 << 20) => {
                        self.chats.push(s << 20 | n)
                    }
                    _ => self.odd("bad load line", line),
                }
            } else if let Some(j) = c.text.strip_prefix("final ") {
                if c.nick == format!("u{j}") {
                    self.finals += 1;
                } else {
                    self.odd("final marker under the wrong nick", line);
                }
            } else {
                self.odd("unknown chat line", line);
            }
            return;
        }
        if let Some(want) = &self.want_nick {
            if line == format!("* {nick} is now known as {want}") {
                self.renamed = true;
                return;
            }
            if line == format!("* you are already {want}") {
                self.already = true;
                return;
            }
        }
        if let Some(rest) = line.strip_prefix("* ") {
            // Other clients' renames (guest-N → uI) and joins of guests are room noise.
            if let Some((from, to)) = rest.split_once(" is now known as ") {
                if from.starts_with("guest-") && to.starts_with('u') {
                    return;
                }
            }
            if let Some((who, _)) = rest.split_once(" joined (") {
                if who.starts_with("guest-") && rest.ends_with(" online)") {
                    return;
                }
            }
        }
        // Leaves, notices about restarts, errors, anything else: nobody leaves in this test.
        self.odd("unexpected line", line);
    }
}

/// One reader thread's clients' tallies: client `i` is entry `i / READERS` of shard
/// `i % READERS`, so a reader never contends with the other readers, only with the main thread.
type Shard = Arc<Mutex<Vec<Tally>>>;

/// A WebSocket client: tungstenite's socket, non-blocking, shared by its reader thread (which
/// reads it when poll says so) and whoever sends through [`Fleet::send`]. The lock is held for
/// one read or one write, never while waiting.
type Web = Arc<Mutex<WebSocket<TcpStream>>>;

/// A client as its reader reads it.
enum Source {
    /// A line client's socket and the bytes not yet split into lines.
    Line(TcpStream, Vec<u8>),
    Web(Web),
}

/// A client for a reader: its index, the descriptor to poll, and how to read it.
type Conn = (usize, RawFd, Source);

type Inbox = Arc<Mutex<Vec<Conn>>>;

/// A client as the fleet writes to it.
enum Sink {
    Line(TcpStream),
    Web(Web, RawFd),
}

pub struct Fleet {
    shards: Vec<Shard>,
    inboxes: Vec<Inbox>,
    /// Write handles by client index; its lock also serialises adding clients.
    writers: Mutex<Vec<Sink>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Fleet {
    pub fn new() -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut shards, mut inboxes, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..READERS {
            let shard: Shard = Arc::new(Mutex::new(Vec::new()));
            let inbox: Inbox = Arc::new(Mutex::new(Vec::new()));
            shards.push(Arc::clone(&shard));
            inboxes.push(Arc::clone(&inbox));
            let stop = Arc::clone(&stop);
            threads.push(
                thread::Builder::new()
                    .name(format!("fleet-reader-{r}"))
                    .spawn(move || fleet_reader(shard, inbox, stop))
                    .expect("spawn reader"),
            );
        }
        Fleet { shards, inboxes, writers: Mutex::new(Vec::new()), stop, threads }
    }

    /// Adds a connected client; `leftover` is what was already read past its welcome line
    /// (`nick` set) or nothing (welcome still to come). Returns its index.
    pub fn add(
        &self,
        stream: TcpStream,
        want_nick: Option<String>,
        nick: Option<String>,
        leftover: Vec<u8>,
    ) -> usize {
        // Reads only happen after poll says readable; the timeout is a safety net.
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        stream.set_write_timeout(Some(LINE_TIMEOUT)).expect("write timeout");
        let fd = stream.as_raw_fd();
        let writer = stream.try_clone().expect("clone");
        self.add_client(Sink::Line(writer), (fd, Source::Line(stream, leftover)), want_nick, nick)
    }

    /// Connects a WebSocket client to `addr` (a web listener, or a TLS bridge to one) with
    /// tungstenite's client and adds it; its welcome is still to come. Returns its index.
    /// (For the web tests, which share this file.)
    #[allow(dead_code)]
    pub fn connect_web(
        &self,
        addr: SocketAddr,
        want_nick: Option<String>,
    ) -> Result<usize, String> {
        // tungstenite zero-fills its whole read buffer on every read: 4 KiB (a few lines)
        // rather than the default 128 KiB keeps a thousand clients cheap.
        let socket = ws_connect(addr, WebSocketConfig::default().read_buffer_size(4096))?;
        let fd = socket.get_ref().as_raw_fd();
        // From here on reads and writes must not wait: one reader follows many sockets, and
        // a send must not stall it by holding the lock.
        socket.get_ref().set_nonblocking(true).map_err(|e| format!("non-blocking: {e}"))?;
        let web: Web = Arc::new(Mutex::new(socket));
        Ok(self.add_client(
            Sink::Web(Arc::clone(&web), fd),
            (fd, Source::Web(web)),
            want_nick,
            None,
        ))
    }

    fn add_client(
        &self,
        sink: Sink,
        (fd, source): (RawFd, Source),
        want_nick: Option<String>,
        nick: Option<String>,
    ) -> usize {
        let mut writers = self.writers.lock().unwrap();
        let index = writers.len();
        writers.push(sink);
        let mut shard = self.shards[index % READERS].lock().unwrap();
        assert_eq!(shard.len(), index / READERS);
        shard.push(Tally { want_nick, nick, ..Tally::default() });
        drop(shard);
        self.inboxes[index % READERS].lock().unwrap().push((index, fd, source));
        index
    }

    /// Connects `count` clients to `addr` and names them `u0`, `u1`, …; returns once every one
    /// has been welcomed and has seen its own rename.
    pub fn join_named(&self, addr: SocketAddr, count: usize, timeout: Duration) {
        for i in 0..count {
            let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
            self.add(stream, Some(format!("u{i}")), None, Vec::new());
        }
        self.wait(timeout, "every welcome", |t| t.iter().all(|x| x.nick.is_some()));
        for i in 0..count {
            self.send(i, &format!("/nick u{i}")).expect("send /nick");
        }
        self.wait(timeout, "every client's own rename", |t| t.iter().all(|x| x.renamed));
    }

    /// Sends `line`: a line (LF-terminated) or a WebSocket text message.
    pub fn send(&self, index: usize, line: &str) -> io::Result<()> {
        let (web, fd) = match &self.writers.lock().unwrap()[index] {
            Sink::Line(w) => return w.try_clone()?.write_all(format!("{line}\n").as_bytes()),
            Sink::Web(web, fd) => (Arc::clone(web), *fd),
        };
        send_web(&web, fd, line)
    }

    /// A line client's socket, to write lines to directly.
    pub fn writer(&self, index: usize) -> TcpStream {
        match &self.writers.lock().unwrap()[index] {
            Sink::Line(w) => w.try_clone().expect("clone"),
            Sink::Web(..) => panic!("client #{index} is a WebSocket client"),
        }
    }

    /// Runs `f` on every client's tally, in index order (all shards locked meanwhile).
    pub fn with<T>(&self, f: impl FnOnce(&[&Tally]) -> T) -> T {
        let guards: Vec<_> = self.shards.iter().map(|s| s.lock().unwrap()).collect();
        let n: usize = guards.iter().map(|g| g.len()).sum();
        let all: Vec<&Tally> = (0..n).map(|i| &guards[i % READERS][i / READERS]).collect();
        f(&all)
    }

    /// Polls until `pred` holds on the tallies; panics with `what` and a summary on timeout.
    pub fn wait(&self, timeout: Duration, what: &str, mut pred: impl FnMut(&[&Tally]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with(&mut pred) {
                return;
            }
            if Instant::now() >= deadline {
                let (closed, odd) = self.with(|t| {
                    let closed: Vec<String> = t
                        .iter()
                        .enumerate()
                        .filter_map(|(i, x)| x.closed.as_ref().map(|c| format!("#{i}: {c}")))
                        .take(10)
                        .collect();
                    let odd: Vec<String> = t
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| !x.unexpected.is_empty())
                        .map(|(i, x)| format!("#{i}: {:?}", x.unexpected))
                        .take(10)
                        .collect();
                    (closed, odd)
                });
                panic!(
                    "timed out after {timeout:?} waiting for {what}; closed: {closed:?}; \
                     unexpected lines: {odd:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Seen {
    Line(String),
    Bad(String),
    Closed(String),
}

fn fleet_reader(shard: Shard, inbox: Inbox, stop: Arc<AtomicBool>) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut seen: Vec<(usize, Seen)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fresh = std::mem::take(&mut *inbox.lock().unwrap());
        // What came before the client was added comes first: bytes read together with a
        // welcome line (by the connect loop), frames read together with the upgrade answer
        // (held by tungstenite, so poll will not report them).
        fresh.retain_mut(|(index, _, source)| match source {
            Source::Line(_, buf) => {
                split_lines(*index, buf, &mut seen);
                true
            }
            Source::Web(web) => read_web(*index, web, &mut seen),
        });
        conns.append(&mut fresh);
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|&(_, fd, _)| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        let mut dead = Vec::new();
        if n > 0 {
            for (k, fd) in fds.iter().enumerate() {
                if fd.revents == 0 {
                    continue;
                }
                let (index, _, source) = &mut conns[k];
                let open = match source {
                    Source::Line(stream, buf) => {
                        read_lines(*index, stream, buf, &mut chunk, &mut seen)
                    }
                    Source::Web(web) => read_web(*index, web, &mut seen),
                };
                if !open {
                    dead.push(k);
                }
            }
        }
        for k in dead.into_iter().rev() {
            conns.swap_remove(k);
        }
        if !seen.is_empty() {
            let mut t = shard.lock().unwrap();
            for (index, s) in seen.drain(..) {
                let tally = &mut t[index / READERS];
                match s {
                    Seen::Line(l) => tally.line(&l),
                    Seen::Bad(l) => tally.odd("line without CRLF or not UTF-8", &l),
                    Seen::Closed(how) => tally.closed = Some(how),
                }
            }
        }
    }
}

/// Reads what a line client's socket has (poll said it has something); false once it ended.
fn read_lines(
    index: usize,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    seen: &mut Vec<(usize, Seen)>,
) -> bool {
    match stream.read(chunk) {
        Ok(0) => {
            let how = if buf.is_empty() {
                "EOF".to_string()
            } else {
                format!("EOF after {:?}", String::from_utf8_lossy(buf))
            };
            seen.push((index, Seen::Closed(how)));
            false
        }
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            split_lines(index, buf, seen);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            true
        }
        Err(e) => {
            seen.push((index, Seen::Closed(format!("error: {e}"))));
            false
        }
    }
}

/// Reads a WebSocket client's messages until its socket has nothing more, so no whole message
/// waits in tungstenite's buffer where poll cannot see it; false once it ended. A text message
/// is a line; anything else (the server sends nothing else but its close) ends the client.
fn read_web(index: usize, web: &Web, seen: &mut Vec<(usize, Seen)>) -> bool {
    let mut socket = web.lock().unwrap();
    loop {
        let how = match socket.read() {
            Ok(Message::Text(text)) => {
                let line = text.as_str();
                seen.push((
                    index,
                    if line.as_bytes().contains(&b'\n') || line.as_bytes().contains(&b'\r') {
                        Seen::Bad(line.to_string())
                    } else {
                        Seen::Line(line.to_string())
                    },
                ));
                continue;
            }
            Ok(Message::Close(Some(frame))) => {
                format!("close frame {} {:?}", u16::from(frame.code), frame.reason.as_str())
            }
            Ok(other) => format!("{other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
            {
                return true;
            }
            Err(e) => format!("error: {e}"),
        };
        seen.push((index, Seen::Closed(how)));
        return false;
    }
}

/// Sends a text message; if the socket cannot take it all now, tungstenite keeps the rest and
/// it is flushed as the socket becomes writable, within [`LINE_TIMEOUT`].
fn send_web(web: &Web, fd: RawFd, line: &str) -> io::Result<()> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut sent = web.lock().unwrap().send(Message::text(line));
    loop {
        match sent {
            Ok(()) => return Ok(()),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "socket not writable"));
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        sent = web.lock().unwrap().flush();
    }
}

fn split_lines(index: usize, buf: &mut Vec<u8>, seen: &mut Vec<(usize, Seen)>) {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
        let raw = &buf[start..start + pos];
        start += pos + 1;
        seen.push((
            index,
            match raw.strip_suffix(b"\r").map(std::str::from_utf8) {
                Some(Ok(l)) => Seen::Line(l.to_string()),
                _ => Seen::Bad(String::from_utf8_lossy(raw).into_owned()),
            },
        ));
    }
    buf.drain(..start);
}

/// Connects and reads the welcome line within the deadlines; returns the stream, the nick and
/// any bytes read past the welcome.
pub fn connect_welcomed(addr: SocketAddr) -> Result<(TcpStream, String, Vec<u8>), String> {
    let stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut s = &stream;
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let rest = buf[pos + 1..].to_vec();
            let line =
                line.strip_suffix('\r').ok_or_else(|| format!("no CRLF on {line:?}"))?.to_string();
            let (nick, _) =
                parse_welcome(&line).ok_or_else(|| format!("not a welcome: {line:?}"))?;
            return Ok((stream, nick, rest));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no welcome within {LINE_TIMEOUT:?} (read {buf:?})"));
        }
        stream.set_read_timeout(Some(deadline - now)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("EOF before the welcome (read {buf:?})")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read before the welcome: {e}")),
        }
    }
}

/// Sets the flags when dropped (also while unwinding).
pub struct StopOnDrop<'a>(pub &'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            f.store(true, Ordering::SeqCst);
        }
    }
}
