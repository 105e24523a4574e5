//! The HTTP side of `/metrics`: a minimal HTTP/1.1 responder on threads of its own.
//!
//! A few threads share the listener and each answers one connection at a time: one request,
//! one response, then the connection is closed. `GET /metrics` is the only thing served (404
//! for any other path, 405 for any other method). Each request is bounded: [`MAX_REQUEST`]
//! bytes, read within [`REQUEST_TIMEOUT`], so a client that sends garbage or nothing at all
//! holds one thread for at most that long while the others go on answering.

use super::counters::Snapshot;
use super::exposition::{self, CONTENT_TYPE};
use log::{debug, warn};
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Threads answering requests: connections served at once.
const RESPONDERS: usize = 4;
/// The most a request (line and headers) may take; Prometheus sends a few hundred bytes.
pub(super) const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its whole request.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, unread input is read and dropped for this long at most, so closing does
/// not turn into a reset that could destroy the response before the client reads it.
const LINGER: Duration = Duration::from_millis(500);
/// Pause after `accept` fails (out of descriptors), so a thread does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The latest snapshot, replaced by the supervisor, read by the responders.
type Shared = Arc<Mutex<Arc<Snapshot>>>;

/// `/metrics` being served on one address. Dropping it stops the service and frees the address.
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
    latest: Shared,
    stop: Arc<AtomicBool>,
}

impl Endpoint {
    /// Binds `addr` and starts answering with `snapshot` (until the next [`Endpoint::publish`]).
    pub fn start(addr: SocketAddr, snapshot: Snapshot) -> io::Result<Endpoint> {
        Endpoint::serve(TcpListener::bind(addr)?, snapshot)
    }

    /// Starts answering on a listener bound already (by the image an upgraded supervisor
    /// replaced).
    pub fn serve(listener: TcpListener, snapshot: Snapshot) -> io::Result<Endpoint> {
        let addr = listener.local_addr()?;
        let latest: Shared = Arc::new(Mutex::new(Arc::new(snapshot)));
        let stop = Arc::new(AtomicBool::new(false));
        // Built first, so that a failure below drops it, which stops the threads already started.
        let endpoint = Endpoint { listener, addr, latest, stop };
        for n in 0..RESPONDERS {
            let listener = endpoint.listener.try_clone()?;
            let latest = Arc::clone(&endpoint.latest);
            let stop = Arc::clone(&endpoint.stop);
            thread::Builder::new()
                .name(format!("metrics-{n}"))
                .spawn(move || respond(&listener, &latest, &stop))?;
        }
        Ok(endpoint)
    }

    /// The listening descriptor, to be kept across an exec of the supervisor.
    pub fn listener(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// The address served (a port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `snapshot` what the next requests get.
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        // The lock is only ever held to swap or clone this pointer.
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes every thread blocked in accept (Linux answers it with EINVAL); each then sees
        // the flag and ends, closing its copy of the listener.
        if let Err(e) = SockRef::from(&self.listener).shutdown(Shutdown::Both) {
            warn!("metrics: cannot stop listening on {}: {e}", self.addr);
        }
    }
}

/// One responder thread: accepts and answers until the endpoint is dropped.
fn respond(listener: &TcpListener, latest: &Shared, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = serve(stream, latest) {
                    debug!("metrics: {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("metrics: accept: {e}");
                thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}

/// What a request turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
    Timeout,
}

/// Judges the bytes received so far: `None` while the request is incomplete.
pub(super) fn judge(request: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(request) {
        Ok(httparse::Status::Partial) if request.len() >= MAX_REQUEST => Some(Answer::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Answer::TooLarge),
        Err(_) => Some(Answer::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            let path = parsed.path.unwrap_or_default();
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            Some(match (parsed.method, path) {
                (_, path) if path != "/metrics" => Answer::NotFound,
                (Some("GET"), _) => Answer::Metrics,
                _ => Answer::MethodNotAllowed,
            })
        }
    }
}

/// Reads one request (bounded in size and time) and answers it.
fn serve(mut stream: TcpStream, latest: &Shared) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let Some(answer) = read_request(&mut stream)? else { return Ok(()) };
    let response = match answer {
        Answer::Metrics => {
            let snapshot = Arc::clone(&latest.lock().unwrap_or_else(PoisonError::into_inner));
            match exposition::render(snapshot) {
                Ok(body) => response("200 OK", CONTENT_TYPE, &[], &body),
                Err(e) => {
                    warn!("metrics: cannot render: {e}");
                    text_response("500 Internal Server Error", &[])
                }
            }
        }
        Answer::NotFound => text_response("404 Not Found", &[]),
        Answer::MethodNotAllowed => text_response("405 Method Not Allowed", &["Allow: GET"]),
        Answer::BadRequest => text_response("400 Bad Request", &[]),
        Answer::TooLarge => text_response("431 Request Header Fields Too Large", &[]),
        Answer::Timeout => text_response("408 Request Timeout", &[]),
    };
    stream.write_all(&response)?;
    stream.shutdown(Shutdown::Write)?;
    linger(&mut stream);
    Ok(())
}

/// The request's verdict, or `None` when the client went away without one.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Answer>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = vec![0; MAX_REQUEST];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(Answer::Timeout));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(Some(Answer::Timeout));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if let Some(answer) = judge(&buf[..len]) {
            return Ok(Some(answer));
        }
    }
}

/// Reads and drops what the client still sends, for [`LINGER`] at most.
fn linger(stream: &mut TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut scratch = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn text_response(status: &str, headers: &[&str]) -> Vec<u8> {
    let body = format!("{status}\n");
    response(status, "text/plain; charset=utf-8", headers, &body)
}

fn response(status: &str, content_type: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_requests() {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(judge(get("/metrics").as_bytes()), Some(Answer::Metrics));
        assert_eq!(judge(get("/metrics?x=1").as_bytes()), Some(Answer::Metrics));
        assert_eq!(judge(get("/").as_bytes()), Some(Answer::NotFound));
        assert_eq!(judge(get("/metrics/").as_bytes()), Some(Answer::NotFound));
        let post = "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(judge(post.as_bytes()), Some(Answer::MethodNotAllowed));
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(judge(b"GET /met"), None);
        assert_eq!(
            judge(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Some(Answer::BadRequest)
        );
        assert_eq!(judge(b"hello there\r\n\r\n"), Some(Answer::BadRequest));
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(judge(long.as_bytes()), Some(Answer::TooLarge));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(judge(many.as_bytes()), Some(Answer::TooLarge));
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn serves_metrics_and_stops_when_dropped() {
        let endpoint =
            Endpoint::start("127.0.0.1:0".parse().unwrap(), Snapshot::default()).unwrap();
        let addr = endpoint.local_addr();
        let answer = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\nchatd_generation 0\n"), "{answer}");
        endpoint.publish(Snapshot { generation: 7, ..Snapshot::default() });
        assert!(get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").contains("\nchatd_generation 7\n"));
        let answer = get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{answer}");
        assert!(answer.contains("\r\nAllow: GET\r\n"), "{answer}");
        // A thread names itself once it runs, which on a busy machine may be after the answers
        // above (another responder gave them).
        let deadline = Instant::now() + Duration::from_secs(20);
        while responders() < RESPONDERS {
            assert!(
                Instant::now() < deadline,
                "{} responder threads of {RESPONDERS}",
                responders()
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(responders(), RESPONDERS);
        drop(endpoint);
        // Every thread woke up from `accept` and ended; the address can be bound again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while responders() > 0 {
            assert!(Instant::now() < deadline, "responder threads still running after the stop");
            thread::sleep(Duration::from_millis(10));
        }
        TcpListener::bind(addr).expect("the address is free again");
    }

    /// Threads of this process named like the responders (no other test starts any).
    fn responders() -> usize {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .filter(|name| name.starts_with("metrics-"))
            .count()
    }
}
