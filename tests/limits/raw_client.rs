//! A raw client for what `common::Client` cannot do: bind a source address (a second client
//! address for `max_clients_per_ip`), shrink SO_RCVBUF before connecting (a slow consumer whose
//! window is small from the handshake on). [`RawClient`] reads lines with the same contract as
//! `Client::read_line`.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::common::*;

/// Connects to `server` (IPv4) from `source` (port 0) with an optional receive buffer size set
/// before the handshake (so the advertised window is small from the start).
pub fn connect_from(
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
) -> TcpStream {
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
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(stream: TcpStream) -> RawClient {
        RawClient { stream, buf: Vec::new() }
    }

    pub fn read_line(&mut self, timeout: Duration) -> Result<String, ReadError> {
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

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn next_line(&mut self) -> String {
        self.read_line(LINE_TIMEOUT).unwrap_or_else(|e| panic!("raw client: expected a line: {e}"))
    }

    pub fn expect_eof(&mut self) {
        match self.read_line(LINE_TIMEOUT) {
            Err(ReadError::Eof) => {}
            other => panic!("raw client: expected EOF, got {other:?}"),
        }
    }
}
