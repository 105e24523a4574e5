//! End-to-end tests of SPEC §4 (limits and bad input — always a clear reaction, never a crash):
//! overlong lines (and a 10 MB one), rate limiting by back-pressure, slow consumers, idle
//! clients, `max_clients`, `max_clients_per_ip`, running out of file descriptors, and malformed
//! control requests. Real binary, real loopback sockets, every wait bounded.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// No history on join (a client's first line is its welcome), no rate limit.
fn room_server(workers: usize) -> ServerBuilder {
    ServerBuilder::new()
        .workers(workers)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
}

/// Clients of one room with their nicks (see tests/protocol.rs for the same idea).
#[derive(Default)]
struct Room {
    clients: Vec<Client>,
    nicks: Vec<String>,
}

impl Room {
    fn join_one(&mut self, server: &Server) -> usize {
        let i = self.clients.len();
        let (c, nick, count) = server.join(&format!("c{i}"));
        assert_eq!(count, i + 1, "{nick}: online count in the welcome line");
        let notice = format!("* {nick} joined ({} online)", i + 1);
        for other in &mut self.clients {
            other.expect_line(&notice);
        }
        self.clients.push(c);
        self.nicks.push(nick);
        i
    }

    /// `n` clients on at least two different workers (the last one is replaced until so).
    fn spread(server: &Server, n: usize) -> Room {
        let mut room = Room::default();
        for _ in 0..n {
            room.join_one(server);
        }
        for _ in 0..30 {
            if room.owners(server).iter().collect::<HashSet<_>>().len() >= 2 {
                return room;
            }
            room.quit(room.clients.len() - 1);
            room.join_one(server);
        }
        panic!("30 reconnections never put {n} clients on two different workers");
    }

    /// Client `i` quits: the others read its leave notice, it reads EOF.
    fn quit(&mut self, i: usize) {
        let mut c = self.clients.remove(i);
        let nick = self.nicks.remove(i);
        c.send_line("/quit");
        let notice = format!("* {nick} left (quit)");
        for o in &mut self.clients {
            o.expect_line(&notice);
        }
        c.expect_eof();
    }

    fn owners(&self, server: &Server) -> Vec<i32> {
        let ports: Vec<u16> = self.clients.iter().map(Client::local_port).collect();
        workers_of(&ports, server.port(), &server.worker_pids())
            .into_iter()
            .zip(&self.nicks)
            .map(|(o, nick)| o.unwrap_or_else(|| panic!("no worker holds {nick}'s connection")))
            .collect()
    }

    /// `from` says `text`; every client's next line must be that (same) chat line.
    fn chat(&mut self, from: usize, text: &str) -> String {
        self.clients[from].send_line(text);
        let nick = self.nicks[from].clone();
        let lines: Vec<String> =
            self.clients.iter_mut().map(|c| c.expect_chat(&nick, text)).collect();
        assert!(lines.iter().all(|l| *l == lines[0]), "one event, different lines: {lines:?}");
        lines[0].clone()
    }
}

// ---------------------------------------------------------------------------------------------
// A raw client for what `common::Client` cannot do: bind a source address, shrink SO_RCVBUF
// before connecting.
// ---------------------------------------------------------------------------------------------

/// Connects to `server` (IPv4) from `source` (port 0) with an optional receive buffer size set
/// before the handshake (so the advertised window is small from the start).
fn connect_from(server: SocketAddr, source: Option<Ipv4Addr>, rcvbuf: Option<usize>) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, setsockopt, socket, sockopt};
    let SocketAddr::V4(server) = server else { panic!("IPv4 server address expected") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .expect("socket");
    if let Some(n) = rcvbuf {
        setsockopt(&fd, sockopt::RcvBuf, &n).expect("SO_RCVBUF");
    }
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(ip) = source {
        let sa = sockaddr(SocketAddrV4::new(ip, 0));
        // SAFETY: `sa` is a valid sockaddr_in of `len` bytes; `fd` is an open socket.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
        assert_eq!(rc, 0, "bind {ip}: {}", io::Error::last_os_error());
    }
    let sa = sockaddr(server);
    // SAFETY: as above; a blocking connect to loopback.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    assert_eq!(rc, 0, "connect {server}: {}", io::Error::last_os_error());
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true).unwrap();
    stream
}

/// A minimal line reader over a raw stream, with the same contract as `Client::read_line`.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn new(stream: TcpStream) -> RawClient {
        RawClient { stream, buf: Vec::new() }
    }

    fn read_line(&mut self, timeout: Duration) -> Result<String, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let Some(line) = raw[..raw.len() - 1].strip_suffix(b"\r") else {
                    return Err(ReadError::Malformed(String::from_utf8_lossy(&raw).into_owned()));
                };
                return String::from_utf8(line.to_vec())
                    .map_err(|e| ReadError::Malformed(format!("{:?}", e.as_bytes())));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout);
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(ReadError::Eof),
                Ok(0) => {
                    let frag = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf.clear();
                    return Err(ReadError::Truncated(frag));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => {}
                    k @ (io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe) => return Err(ReadError::Reset(k)),
                    _ => return Err(ReadError::Io(e)),
                },
            }
        }
    }

    fn next_line(&mut self) -> String {
        self.read_line(LINE_TIMEOUT).unwrap_or_else(|e| panic!("raw client: expected a line: {e}"))
    }

    fn expect_eof(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(ReadError::Eof) => {}
            other => panic!("raw client: expected EOF, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// VmRSS of `pid` in KiB.
fn vm_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().collect();
    // After the comm field: [0] state (field 3) … [11] utime (field 14), [12] stime (field 15).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// Open file descriptor numbers of `pid`, sorted.
fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

// ---------------------------------------------------------------------------------------------
// Overlong lines
// ---------------------------------------------------------------------------------------------

#[test]
fn line_too_long() {
    let server = room_server(3).chat_key("max_line_bytes = 16").start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = (0, 1);
    let nick_a = room.nicks[a].clone();
    let err = "! line too long (max 16 bytes)";

    // Exactly at the limit is fine, with LF or CRLF (CR/LF are not counted); so are 16 bytes
    // of multi-byte UTF-8.
    room.chat(a, &"x".repeat(16));
    room.clients[a].send_raw(format!("{}\r\n", "y".repeat(16)).as_bytes()).unwrap();
    let want = "y".repeat(16);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, &want);
    }
    room.chat(a, &"é".repeat(8));

    // One byte over: one error, to the sender only; the next line works.
    let cases: Vec<Vec<u8>> = vec![
        format!("{}\n", "z".repeat(17)).into_bytes(),
        format!("{}\r\n", "é".repeat(9)).into_bytes(),
        format!("{}\n", "w".repeat(5000)).into_bytes(),
    ];
    for raw in &cases {
        room.clients[a].send_raw(raw).unwrap();
        room.clients[a].expect_line(err);
        room.chat(a, "next");
    }
    // Overlong line in many pieces, then a good line in the same write as its end.
    for _ in 0..40 {
        room.clients[a].send_raw(&[b'p'; 100]).unwrap();
    }
    room.clients[a].send_raw(b"ppp\nafter pieces\n").unwrap();
    room.clients[a].expect_line(err);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, "after pieces");
    }
    // Two overlong lines back to back: two errors (one per line).
    room.clients[a].send_raw(format!("{0}\n{0}\nok\n", "q".repeat(20)).as_bytes()).unwrap();
    room.clients[a].expect_line(err);
    room.clients[a].expect_line(err);
    for c in &mut room.clients {
        c.expect_chat(&nick_a, "ok");
    }
    // b, on another worker than a or not, never saw an error or a fragment: its lines so far
    // are exactly the chat lines above.
    let bad: Vec<&String> =
        room.clients[b].transcript().iter().filter(|l| l.starts_with('!')).collect();
    assert!(bad.is_empty(), "b saw errors: {bad:?}");
}

#[test]
fn ten_megabyte_line_keeps_worker_memory_bounded() {
    let server = room_server(2).start();
    let mut room = Room::spread(&server, 2);
    let nick_a = room.nicks[0].clone();
    let worker = room.owners(&server)[0];
    let before = vm_rss_kib(worker);

    let mut writer = room.clients[0].writer();
    writer.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let sender = thread::spawn(move || {
        let chunk = vec![b'A'; 64 * 1024];
        let mut sent = 0usize;
        let r = (|| {
            while sent < 10 * 1024 * 1024 {
                writer.write_all(&chunk)?;
                sent += chunk.len();
            }
            Ok::<_, io::Error>(())
        })();
        done2.store(true, Ordering::SeqCst);
        r.map(|()| sent)
    });
    // Sample the worker's memory while the line streams in.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "sending 10 MB took more than 60 s");
        peak = peak.max(vm_rss_kib(worker));
        thread::sleep(Duration::from_millis(2)); // sampling interval
    }
    let sent = sender.join().unwrap().expect("the server must keep reading the long line");
    assert_eq!(sent, 10 * 1024 * 1024);
    peak = peak.max(vm_rss_kib(worker));
    assert!(
        peak < before + 20 * 1024,
        "worker VmRSS grew from {before} KiB to {peak} KiB while receiving a 10 MB line"
    );

    // Exactly one error, and after the LF the client chats normally.
    room.clients[0].send_raw(b"\n").unwrap();
    room.clients[0].expect_line("! line too long (max 1024 bytes)");
    room.clients[0].send_line("after the flood");
    room.clients[0].expect_chat(&nick_a, "after the flood");
    room.clients[1].expect_chat(&nick_a, "after the flood");
    assert!(process_alive(worker), "the worker died");
    assert!(server.worker_pids().contains(&worker), "the worker was replaced");
    eprintln!("worker VmRSS {before} KiB before, peak {peak} KiB during the 10 MB line");
}

// ---------------------------------------------------------------------------------------------
// Rate limit: back-pressure, nothing dropped, others not queued behind the flood
// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limit_throttles_a_flood_without_dropping_it() {
    let server = ServerBuilder::new()
        .workers(3)
        .chat_key("history_on_join = 0")
        .chat_key(r#"rate_limit = { messages = 20, per = "1s", burst = 5 }"#)
        .start();
    let mut room = Room::spread(&server, 3);
    let owners = room.owners(&server);
    // Flooder and observer on different workers; the normal client is the third one.
    let (f, o) = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .find(|&(i, j)| i != j && owners[i] != owners[j])
        .unwrap();
    let n = 3 - f - o;
    let nick_f = room.nicks[f].clone();
    let nick_n = room.nicks[n].clone();

    const FLOOD: usize = 100;
    let flood: Vec<String> = (1..=FLOOD).map(|i| format!("flood-{i:03}")).collect();
    let mut bytes = Vec::new();
    for l in &flood {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    let start = Instant::now();
    room.clients[f].send_raw(&bytes).unwrap();

    // The observer reads the flood in order; after flood-010 the normal client says something,
    // which must not wait behind the rest of the flood.
    let mut seen = Vec::new();
    let mut normal_at = None;
    let mut normal_sent = None;
    while seen.len() < FLOOD {
        let l = room.clients[o].next_line();
        let c = parse_chat(&l).unwrap_or_else(|| panic!("observer: unexpected line {l:?}"));
        if c.nick == nick_n && c.text == "normal message" {
            normal_at = Some((seen.len(), normal_sent.map(|t: Instant| t.elapsed())));
            continue;
        }
        assert_eq!(c.nick, nick_f, "observer: unexpected line {l:?}");
        assert_eq!(c.text, flood[seen.len()], "observer: flood out of order or lost");
        seen.push(c.text);
        if seen.len() == 10 {
            room.clients[n].send_line("normal message");
            normal_sent = Some(Instant::now());
        }
    }
    let elapsed = start.elapsed();
    let (flood_before, delay) =
        normal_at.expect("the normal client's message never arrived during the flood");
    eprintln!(
        "flood of {FLOOD} took {elapsed:?}; normal message arrived after {flood_before} flood \
         lines, {delay:?} after it was sent"
    );
    assert!(
        flood_before < 60,
        "the normal message came after {flood_before} flood lines: queued behind the flood"
    );
    // 5 at once, then 20 per second: 95 more lines take ≥ 4.75 s. Less means no throttling.
    assert!(elapsed >= Duration::from_millis(3500), "flood not throttled: {elapsed:?}");
    assert!(elapsed <= Duration::from_secs(20), "flood too slow: {elapsed:?}");

    // Everyone saw the same order; the flooder got every one of its lines back.
    let reference: Vec<String> =
        room.clients[o].transcript()[room.clients[o].transcript().len() - (FLOOD + 1)..].to_vec();
    for i in [f, n] {
        let got: Vec<String> = (0..=FLOOD).map(|_| room.clients[i].next_line()).collect();
        assert_eq!(got, reference, "client {i} saw another order than the observer");
    }
    // The flooder was not cut off.
    room.chat(f, "still here");
}

// ---------------------------------------------------------------------------------------------
// Slow consumer
// ---------------------------------------------------------------------------------------------

#[test]
fn never_reading_client_is_cut_off_and_the_room_goes_on() {
    let server = room_server(2)
        .chat_key("max_backlog_bytes = 65536")
        .raw("[socket]\nsend_buffer = 4096")
        .start();
    let (mut talker, nick_t, _) = server.join("talker");
    let (mut observer, nick_o, _) = server.join("observer");
    talker.expect_line(&format!("* {nick_o} joined (2 online)"));
    // The slow client: tiny receive buffer, reads its welcome and then nothing.
    let mut slow = RawClient::new(connect_from(server.addr(), None, Some(4096)));
    let welcome = slow.next_line();
    let (nick_s, n) = parse_welcome(&welcome).unwrap_or_else(|| panic!("welcome: {welcome:?}"));
    assert_eq!(n, 3);
    for c in [&mut talker, &mut observer] {
        c.expect_line(&format!("* {nick_s} joined (3 online)"));
    }

    const LINES: usize = 1000;
    const BATCH: usize = 20;
    let pad = "x".repeat(400);
    let texts: Vec<String> = (1..=LINES).map(|i| format!("{i:04} {pad}")).collect();
    let left = format!("* {nick_s} left (too slow)");
    // The observer reads everything in its own thread; the talker sends in batches of 20 lines
    // (~8.6 KB of output) and reads its own echo of each batch before the next, so no reader's
    // queue comes near max_backlog_bytes — only the slow client's does.
    let observer = {
        let (texts, nick_t, left) = (texts.clone(), nick_t.clone(), left.clone());
        thread::spawn(move || {
            let mut c = observer;
            let (mut chats, mut lefts) = (0, 0);
            while chats < texts.len() || lefts == 0 {
                let l = c.next_line();
                if l == left {
                    lefts += 1;
                    continue;
                }
                match parse_chat(&l) {
                    Some(p) if p.nick == nick_t && p.text == texts[chats] => chats += 1,
                    _ => panic!("observer: expected chat {:?}…, got {l:?}", &texts[chats][..4]),
                }
            }
            (c, lefts)
        })
    };
    let start = Instant::now();
    let (mut chats, mut t_lefts) = (0, 0);
    for batch in texts.chunks(BATCH) {
        let mut bytes = String::new();
        for t in batch {
            bytes += t;
            bytes.push('\n');
        }
        talker.send_raw(bytes.as_bytes()).expect("talker write");
        let end = chats + batch.len();
        while chats < end {
            let l = talker.next_line();
            if l == left {
                t_lefts += 1;
                continue;
            }
            match parse_chat(&l) {
                Some(p) if p.nick == nick_t && p.text == texts[chats] => chats += 1,
                _ => panic!("talker: expected chat {:?}…, got {l:?}", &texts[chats][..4]),
            }
        }
    }
    if t_lefts == 0 {
        talker.expect_line(&left);
        t_lefts = 1;
    }
    let (mut observer, o_lefts) = observer.join().expect("observer's view");
    eprintln!("{LINES} lines of ~400 bytes reached both readers in {:?}", start.elapsed());
    assert_eq!((t_lefts, o_lefts), (1, 1), "the slow client's leave notice, once each");

    // The slow client's connection ends (maybe after some lines and `* disconnected: too
    // slow`, best effort).
    let mut lines = Vec::new();
    let end = loop {
        match slow.read_line(LINE_TIMEOUT) {
            Ok(l) => lines.push(l),
            Err(e) => break e,
        }
    };
    eprintln!("slow client read {} lines before {end}", lines.len());
    assert!(
        matches!(end, ReadError::Eof | ReadError::Reset(_)),
        "slow client: expected the connection to end, got {end}"
    );
    // Whatever it got before the end must be whole lines (SPEC §2: one event per line): the
    // talker's chat lines as sent, in order, and at most a last `* disconnected: too slow`.
    for (i, l) in lines.iter().enumerate() {
        let whole_chat = parse_chat(l).is_some_and(|p| p.nick == nick_t && p.text == texts[i]);
        let notice = i + 1 == lines.len() && l == "* disconnected: too slow";
        assert!(
            whole_chat || notice,
            "slow client: line {} is neither chat line {:?}… nor the final notice: {:?}",
            i + 1,
            &texts[i][..4],
            format!("{}…{}", &l[..l.len().min(30)], &l[l.len().saturating_sub(40)..])
        );
    }
    // The room goes on without it.
    talker.send_line("/who");
    let mut both = [nick_t.clone(), nick_o.clone()];
    both.sort_by_key(|n| n.to_ascii_lowercase());
    talker.expect_line(&format!("* 2 online: {}", both.join(", ")));
    talker.send_line("bye");
    observer.expect_chat(&nick_t, "bye");
}

// ---------------------------------------------------------------------------------------------
// Idle timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_client_is_disconnected_active_one_stays() {
    let server = room_server(2).chat_key(r#"idle_timeout = "1s""#).start();
    let (mut keeper, nick_k, _) = server.join("keeper");
    let (mut idle, nick_i, _) = server.join("idle");
    let idle_joined = Instant::now();
    keeper.expect_line(&format!("* {nick_i} joined (2 online)"));

    // The keeper sends a line (chat or any command) every 300 ms and waits for its answer.
    let left = format!("* {nick_i} left (idle)");
    let mut left_after = None;
    let mut kept_after_left = None;
    let commands = ["/who", "/nope", "//ping", "/help x", "/me stretches"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        assert!(Instant::now() < deadline, "idle client not disconnected within 20 s");
        let cmd = commands[i % commands.len()];
        i += 1;
        keeper.send_line(cmd);
        // The answer, possibly preceded by the idle client's leave notice.
        loop {
            let l = keeper.next_line();
            if l == left {
                assert!(left_after.is_none(), "leave notice twice");
                left_after = Some(idle_joined.elapsed());
                kept_after_left = Some(Instant::now());
                continue;
            }
            let answered = match cmd {
                "/who" => l.contains(" online: "),
                "/nope" => l == "! unknown command '/nope' (try /help)",
                "//ping" => parse_chat(&l).is_some_and(|c| c.nick == nick_k && c.text == "/ping"),
                "/help x" => l == "! usage: /help",
                _ => l.ends_with(&format!(" * {nick_k} stretches")),
            };
            assert!(answered, "keeper: unexpected answer {l:?} to {cmd}");
            break;
        }
        // Stay for 2.5 s (two idle checks and more) after the idle client was cut off.
        if kept_after_left.is_some_and(|t| t.elapsed() > Duration::from_millis(2500)) {
            break;
        }
        thread::sleep(Duration::from_millis(300)); // pacing, not synchronisation
    }
    let left_after = left_after.unwrap();
    assert!(left_after >= Duration::from_millis(900), "cut off too early: {left_after:?}");
    eprintln!("idle client cut off {left_after:?} after joining");

    // The idle client: whatever room lines it got, then `* disconnected: idle`, then EOF.
    let (lines, end) = idle.read_to_close(LINE_TIMEOUT);
    assert_eq!(lines.last().map(String::as_str), Some("* disconnected: idle"), "{lines:?}");
    assert!(matches!(end, ReadError::Eof), "idle client: expected EOF, got {end}");
    // The keeper is still there.
    keeper.send_line("/who");
    keeper.expect_line(&format!("* 1 online: {nick_k}"));
}

// ---------------------------------------------------------------------------------------------
// max_clients, max_clients_per_ip
// ---------------------------------------------------------------------------------------------

#[test]
fn max_clients_is_room_wide() {
    let server = room_server(3).server_key("max_clients = 3").start();
    let mut room = Room::spread(&server, 3);
    // Every worker serves fewer than 3 clients, so any refusal counts the whole room.
    let owners = room.owners(&server);
    for w in server.worker_pids() {
        assert!(owners.iter().filter(|&&o| o == w).count() < 3);
    }
    for k in 0..4 {
        let mut extra = server.connect(&format!("extra{k}"));
        extra.expect_line("! server full");
        extra.expect_eof();
    }
    // Nobody saw the refused ones come or go.
    room.chat(0, "still three");
    // When one leaves, a new one gets in.
    room.quit(2);
    let (mut d, nick_d, n) = server.join("d");
    assert_eq!(n, 3);
    for c in &mut room.clients {
        c.expect_line(&format!("* {nick_d} joined (3 online)"));
    }
    d.send_line("/who");
    let l = d.next_line();
    assert!(l.starts_with("* 3 online: "), "{l:?}");
}

#[test]
fn max_clients_per_ip_is_room_wide() {
    let server = room_server(3).server_key("max_clients_per_ip = 2").start();
    // Two from 127.0.0.1, on different workers.
    let mut room = Room::spread(&server, 2);
    for k in 0..3 {
        let mut third = server.connect(&format!("third{k}"));
        third.expect_line("! too many connections from your address");
        third.expect_eof();
    }
    // Another address is welcome (two of them, even).
    let mut others: Vec<RawClient> = Vec::new();
    for k in 0..2 {
        let mut other =
            RawClient::new(connect_from(server.addr(), Some(Ipv4Addr::new(127, 0, 0, 2)), None));
        let w = other.next_line();
        let (nick, n) = parse_welcome(&w).unwrap_or_else(|| panic!("127.0.0.2: {w:?}"));
        assert_eq!(n, 3 + k);
        for c in &mut room.clients {
            c.expect_line(&format!("* {nick} joined ({} online)", 3 + k));
        }
        for o in &mut others {
            assert_eq!(o.next_line(), format!("* {nick} joined ({} online)", 3 + k));
        }
        others.push(other);
    }
    let mut third =
        RawClient::new(connect_from(server.addr(), Some(Ipv4Addr::new(127, 0, 0, 2)), None));
    assert_eq!(third.next_line(), "! too many connections from your address");
    third.expect_eof();
    // Once a 127.0.0.1 client leaves, another gets in.
    let gone = room.nicks[1].clone();
    room.quit(1);
    for o in &mut others {
        assert_eq!(o.next_line(), format!("* {gone} left (quit)"));
    }
    let (_again, nick, n) = server.join("again");
    assert_eq!(n, 4);
    room.clients[0].expect_line(&format!("* {nick} joined (4 online)"));
}

// ---------------------------------------------------------------------------------------------
// Out of file descriptors
// ---------------------------------------------------------------------------------------------

#[test]
fn out_of_file_descriptors_keeps_serving_without_busy_loop() {
    let server = room_server(1).start();
    let worker = server.wait_for_workers(1, START_TIMEOUT)[0];
    // Make sure the worker is fully up (it answers) before counting its descriptors.
    let (probe, _, _) = server.join("probe");
    drop(probe);
    // Wait until the probe is fully gone (the worker closed its socket).
    let port = server.port();
    wait_until(LINE_TIMEOUT, "the worker to close the probe's socket", || {
        let owned = socket_inodes_of(worker);
        let busy = tcp_table()
            .iter()
            .any(|e| e.local.port() == port && e.state != TCP_LISTEN && owned.contains(&e.inode));
        (!busy).then_some(())
    });
    // Lower the worker's open-files limit (soft and hard) so that exactly CAPACITY more fit: a
    // new descriptor takes the lowest free number, which must be below the limit (descriptors
    // already open above it stay usable).
    const CAPACITY: usize = 8;
    let fds = open_fds(worker);
    let limit = (CAPACITY..)
        .find(|&l| l - fds.iter().filter(|&&fd| (fd as usize) < l).count() == CAPACITY)
        .unwrap();
    let capacity = CAPACITY;
    eprintln!("worker {worker}: open fds {fds:?}; limit {limit}");
    let rl = libc::rlimit { rlim_cur: limit as u64, rlim_max: limit as u64 };
    // SAFETY: prlimit reads `rl` and writes nothing (null old-limit pointer).
    let rc = unsafe { libc::prlimit(worker, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());

    const CONNECTIONS: usize = 40;
    let clients: Vec<Client> = (0..CONNECTIONS).map(|i| server.connect(&format!("c{i}"))).collect();
    server.wait_for_log("out of file descriptors", LINE_TIMEOUT);
    // The first `capacity` (the accept queue is FIFO) are in the room; the rest wait.
    let (mut inside, mut waiting): (Vec<Client>, Vec<Client>) = {
        let mut it = clients.into_iter();
        let inside: Vec<Client> = it.by_ref().take(capacity).collect();
        (inside, it.collect())
    };
    let mut nicks = Vec::new();
    for c in &mut inside {
        nicks.push(c.expect_welcome().0);
    }
    let accepted =
        workers_of(&waiting.iter().map(Client::local_port).collect::<Vec<_>>(), port, &[worker]);
    assert!(accepted.iter().all(Option::is_none), "accepted beyond the limit: {accepted:?}");
    assert!(
        matches!(waiting[0].read_line(Duration::from_millis(300)), Err(ReadError::Timeout)),
        "a waiting connection got a line"
    );
    // Those inside chat normally.
    inside[0].send_line("hello from inside");
    for c in &mut inside {
        let l = c
            .read_until(LINE_TIMEOUT, |l| !l.contains(" joined ("))
            .unwrap_or_else(|e| panic!("{}: {e}", c.label()));
        assert_eq!(
            parse_chat(&l).map(|p| (p.nick, p.text)),
            Some((nicks[0].clone(), "hello from inside".to_string())),
            "{}: {l:?}",
            c.label()
        );
    }
    // No busy loop while connections wait: < 0.5 s of CPU over a 2 s window.
    let cpu0 = cpu_seconds(worker);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(2)); // a measurement window, not a synchronisation
    let cpu = cpu_seconds(worker) - cpu0;
    eprintln!("worker used {cpu:.3} s of CPU in {:?} while out of descriptors", t0.elapsed());
    assert!(cpu < 0.5, "worker busy-loops while out of descriptors: {cpu:.3} s CPU in 2 s");

    // Three leave: the first three waiting ones get their welcome.
    for c in inside.drain(capacity - 3..) {
        drop(c);
    }
    for c in waiting.iter_mut().take(3) {
        c.expect_welcome();
    }
    let (newcomer_nick, _) = parse_welcome(&waiting[0].transcript()[0]).unwrap();
    waiting[0].send_line("I got in");
    let l = waiting[0].read_until(LINE_TIMEOUT, |l| parse_chat(l).is_some()).unwrap();
    assert_eq!(parse_chat(&l).map(|p| (p.nick, p.text)), Some((newcomer_nick, "I got in".into())));
    let logged =
        server.log_lines().iter().filter(|l| l.contains("out of file descriptors")).count();
    assert_eq!(logged, 1, "`out of file descriptors` must be logged once");
    assert!(process_alive(worker) && server.worker_pids() == vec![worker], "worker replaced");
}

// ---------------------------------------------------------------------------------------------
// Malformed control requests
// ---------------------------------------------------------------------------------------------

/// Sends `request` on a fresh control connection (then half-closes) and returns the reply
/// line, `None` if the server closed without one.
fn control_raw(server: &Server, request: &[u8]) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(server.control_socket()).expect("connect control socket");
    s.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(LINE_TIMEOUT)).unwrap();
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    match s.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("control reply to {request:?}: {e}"),
    }
    if reply.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.ends_with('\n') && text.lines().count() == 1, "one reply line: {text:?}");
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("reply {text:?} is not JSON: {e}"));
    Some(v)
}

#[test]
fn malformed_control_requests_are_refused_and_the_server_keeps_running() {
    let server = room_server(2).start();
    let workers = server.wait_for_workers(2, START_TIMEOUT);
    let (mut a, nick_a, _) = server.join("a");

    let garbage: Vec<Vec<u8>> = vec![
        b"bogus\n".to_vec(),
        b"STATUS please\n".to_vec(),
        b"\xff\x00\x13\x37binary\n".to_vec(),
        b"{\"cmd\":\"status\"}\n".to_vec(),
        vec![b'x'; 8192],
    ];
    for g in &garbage {
        let reply = control_raw(&server, g)
            .unwrap_or_else(|| panic!("no reply to the malformed request {g:?}"));
        assert_eq!(reply["ok"], serde_json::Value::Bool(false), "reply to {g:?}: {reply}");
    }
    // A connection that closes without a request: no reply, or a refusal; nothing else.
    if let Some(reply) = control_raw(&server, b"") {
        assert_eq!(reply["ok"], serde_json::Value::Bool(false), "reply to nothing: {reply}");
    }

    // Still running, same processes: status works, clients chat.
    let out = server.run(&["status", "--json"], LINE_TIMEOUT);
    assert!(out.status.success(), "status after garbage: {}", output_text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", output_text(&out)));
    assert_eq!(status["clients"], 1, "{status}");
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(2), "{status}");
    let ok = control_raw(&server, b"status\n").expect("a reply to status");
    assert_eq!(ok["ok"], serde_json::Value::Bool(true), "{ok}");
    assert_eq!(server.worker_pids(), workers, "workers were replaced");
    assert!(process_alive(server.pid()), "the supervisor exited");
    a.send_line("still chatting");
    a.expect_chat(&nick_a, "still chatting");

    // SPEC §4: a malformed control frame is logged — each of them.
    server.wait_for_log("bogus", LINE_TIMEOUT);
    let logged: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("control"))
        .collect();
    assert!(
        logged.len() >= garbage.len(),
        "{} malformed control requests, {} logged: {logged:#?}",
        garbage.len(),
        logged.len()
    );
}
