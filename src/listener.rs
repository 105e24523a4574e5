//! The listening sockets of the worker slots.
//!
//! Every slot has its own `SO_REUSEPORT` socket per listen address, so the kernel spreads new
//! connections over the slots' accept queues. The supervisor binds them once per slot and keeps
//! them open for the slot's whole life; workers get them across exec. A worker dying therefore
//! never closes a listener, and connections queued on it wait for the replacement instead of
//! being reset (closing one socket of a reuseport group aborts what is queued on it).
//!
//! `SO_REUSEPORT` would also let a stranger's socket (a second `chatd serve`, any server of the
//! same user that sets it) share a port with ours and take half of the connections. So a new
//! group first claims its address with a plain socket, which the kernel refuses while anyone
//! listens there; only then do the slots' sockets bind (see [`bind_group`]).

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

/// What a listener's connections speak. A slot holds one listener per configured address, each
/// with its kind, and a worker's setup names the kind of every listener it inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Lines over TCP (`server.listen`).
    Plain,
    /// Lines over TLS (`tls.listen`).
    Tls,
    /// The page and its WebSocket over TCP (`web.listen`).
    Web,
    /// The page and its WebSocket over TLS (`web.listen` with `web.tls = true`).
    WebTls,
}

impl Kind {
    /// How `chatd who` and the logs name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "tcp",
            Kind::Tls => "tls",
            Kind::Web => "web",
            Kind::WebTls => "web+tls",
        }
    }

    /// What the `listening on` log line adds after the address.
    pub fn log_tag(self) -> &'static str {
        match self {
            Kind::Plain => "",
            Kind::Tls => " (tls)",
            Kind::Web => " (web)",
            Kind::WebTls => " (web, tls)",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An inherited listening socket as the supervisor names it on a worker's command line:
/// `FD` (plain) or `KIND:FD` (`tls:7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenFd {
    pub fd: std::os::fd::RawFd,
    pub kind: Kind,
}

impl fmt::Display for ListenFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Plain => write!(f, "{}", self.fd),
            kind => write!(f, "{kind}:{}", self.fd),
        }
    }
}

impl FromStr for ListenFd {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenFd, String> {
        let (kind, fd) = match s.split_once(':') {
            None => (Kind::Plain, s),
            Some(("tls", fd)) => (Kind::Tls, fd),
            Some(("web", fd)) => (Kind::Web, fd),
            Some(("web+tls", fd)) => (Kind::WebTls, fd),
            Some((kind, _)) => return Err(format!("unknown listener kind '{kind}'")),
        };
        let fd = fd.parse().map_err(|e| format!("descriptor '{fd}': {e}"))?;
        Ok(ListenFd { fd, kind })
    }
}

/// Binds one reuseport listener. `SO_REUSEADDR` lets a restarted service bind while old
/// connections linger in TIME_WAIT; `IPV6_V6ONLY` lets `0.0.0.0:P` and `[::]:P` be listed
/// side by side.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

/// Binds `slots` listeners on `addr`, a new group: fails with
/// `address already in use by another process` if some other socket listens on `addr`.
/// With port 0 the claim picks a free port and every slot binds that one. `own` are the
/// addresses this process already listens on (resolved ports).
///
/// Only for addresses this process does not listen on yet; a slot added to an existing group
/// joins it with [`bind`].
pub fn bind_group(
    addr: SocketAddr,
    slots: usize,
    backlog: u32,
    own: &[SocketAddr],
) -> io::Result<Vec<Socket>> {
    let claim = match claim(addr) {
        Ok(claim) => Some(claim),
        // Our own listener on the same port (`127.0.0.1:P` while `0.0.0.0:P` is added, say)
        // refuses the claim too, so the claim cannot tell a stranger here. A stranger could
        // only be there by binding with SO_REUSEPORT after we did, which it could do to any of
        // our groups anyway.
        Err(e)
            if e.kind() == io::ErrorKind::AddrInUse && own.iter().any(|o| overlaps(*o, addr)) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    // Port 0 is resolved by the claim (without one, the port overlapped ours, so it is not 0).
    let addr = match &claim {
        Some(claim) => local_addr(claim)?,
        None => addr,
    };
    let mut sockets = Vec::with_capacity(slots);
    for _ in 0..slots {
        // In use now: someone started listening between the claim and this bind.
        sockets.push(bind(addr, backlog).map_err(in_use_by_another)?);
    }
    // The claim is held until the group listens, so nobody can take the port in between
    // without listening on it; it was never listening, so closing it resets nothing.
    drop(claim);
    Ok(sockets)
}

/// Whether listeners on `a` and `b` compete for the same connections: same port and family,
/// and the same IP or a wildcard on either side (our IPv6 sockets are v6-only).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Binds, without `SO_REUSEPORT` and without listening, a socket on `addr`. The kernel refuses
/// while any socket listens there, with or without `SO_REUSEPORT`, whoever owns it.
/// `SO_REUSEADDR` keeps connections in TIME_WAIT from a previous run from counting, and a
/// socket that is bound but not listening lets our slots' sockets bind beside it.
fn claim(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(in_use_by_another)?;
    Ok(socket)
}

/// `EADDRINUSE` said the way `chatd serve` reports it (the address is added by the caller).
fn in_use_by_another(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(io::ErrorKind::AddrInUse, "address already in use by another process")
    } else {
        e
    }
}

/// The address a socket is bound to.
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

/// Where Linux says whether a closed reuseport listener's queue moves to a sibling.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Logs a warning when `net.ipv4.tcp_migrate_req` is 0 (docs/operations.md, "The sysctl"):
/// then a reload that removes worker slots or listen addresses resets the connections still
/// queued on their listeners. Said at start, since the package's sysctl.d file may not have
/// applied (a container's `/proc/sys` is often read-only). A kernel without the setting (before
/// 5.14) has nothing to warn about that could be fixed.
pub fn check_migrate_req() {
    match std::fs::read_to_string(MIGRATE_REQ) {
        Ok(value) => {
            if let Some(warning) = migrate_req_warning(&value) {
                log::warn!("{warning}");
            }
        }
        Err(e) => log::debug!("cannot read {MIGRATE_REQ}: {e}"),
    }
}

/// The warning for the sysctl's value as read, if it needs one.
fn migrate_req_warning(value: &str) -> Option<&'static str> {
    (value.trim() == "0").then_some(
        "net.ipv4.tcp_migrate_req is 0: a reload that removes workers or listen addresses may \
         reset connections still queued on their listeners; set it to 1 (sysctl -w \
         net.ipv4.tcp_migrate_req=1; in a container, in its network namespace, e.g. \
         --sysctl net.ipv4.tcp_migrate_req=1; see \"The sysctl\" in operations.md)",
    )
}

/// Applies `[socket]` options to an accepted client connection.
pub fn tune_accepted(
    stream: &impl std::os::fd::AsFd,
    cfg: &crate::config::Socket,
) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_tcp_nodelay(cfg.nodelay)?;
    if let Some(idle) = cfg.keepalive {
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
    }
    if cfg.recv_buffer > 0 {
        sock.set_recv_buffer_size(cfg.recv_buffer)?;
    }
    if cfg.send_buffer > 0 {
        sock.set_send_buffer_size(cfg.send_buffer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_name_their_kind() {
        for text in ["7", "tls:8", "web:9", "web+tls:10"] {
            assert_eq!(text.parse::<ListenFd>().unwrap().to_string(), text);
        }
        assert_eq!("9".parse::<ListenFd>().unwrap(), ListenFd { fd: 9, kind: Kind::Plain });
        assert!("udp:1".parse::<ListenFd>().is_err());
        assert!("tls:x".parse::<ListenFd>().is_err());
    }

    #[test]
    fn migrate_req_warns_only_when_off() {
        let warning = migrate_req_warning("0\n").expect("a warning for 0");
        assert!(warning.starts_with("net.ipv4.tcp_migrate_req is 0: "), "{warning}");
        assert!(warning.contains("sysctl -w net.ipv4.tcp_migrate_req=1"), "{warning}");
        assert_eq!(migrate_req_warning("1\n"), None);
        assert_eq!(migrate_req_warning(""), None);
    }

    #[test]
    fn port_zero_group_shares_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16, &[]).unwrap();
        let ports: Vec<u16> = group.iter().map(|s| local_addr(s).unwrap().port()).collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]));
    }

    fn assert_refused(addr: SocketAddr) {
        let e = bind_group(addr, 2, 16, &[]).expect_err("a second group on a port in use");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(e.to_string(), "address already in use by another process");
    }

    #[test]
    fn a_second_group_on_the_same_port_is_refused() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 2, 16, &[]).unwrap();
        let addr = local_addr(&first[0]).unwrap();
        assert_refused(addr);
        // Slots added to our own group still join it.
        bind(addr, 16).unwrap();
    }

    #[test]
    fn a_plain_listener_or_a_stranger_with_reuseport_is_refused() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_refused(plain.local_addr().unwrap());
        // Same user, SO_REUSEPORT set, listening: the kernel would let it share the port.
        let stranger = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert_refused(local_addr(&stranger).unwrap());
    }

    #[test]
    fn an_address_overlapping_our_own_listener_is_allowed() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 2, 16, &[]).unwrap();
        let own = local_addr(&first[0]).unwrap();
        // The same address again (configured as port 0 first, then by its number).
        assert_refused(own);
        let group = bind_group(own, 2, 16, &[own]).expect("beside our own listener");
        assert_eq!(local_addr(&group[1]).unwrap(), own);
        // A stranger's listener on another port is no excuse.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_group(plain.local_addr().unwrap(), 1, 16, &[own]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:5"), a("0.0.0.0:5")));
        assert!(overlaps(a("0.0.0.0:5"), a("127.0.0.1:5")));
        assert!(overlaps(a("[::]:5"), a("[::1]:5")));
        assert!(overlaps(a("127.0.0.1:5"), a("127.0.0.1:5")));
        assert!(!overlaps(a("127.0.0.1:5"), a("127.0.0.2:5")));
        assert!(!overlaps(a("127.0.0.1:5"), a("0.0.0.0:6")));
        assert!(!overlaps(a("0.0.0.0:5"), a("[::]:5")));
    }

    #[test]
    fn connections_in_time_wait_do_not_block_a_new_group() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16, &[]).unwrap();
        let addr = local_addr(&first[0]).unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        first[0].set_nonblocking(false).unwrap();
        let (accepted, _) = first[0].accept().unwrap();
        // The server side closes first, so its end of the connection goes to TIME_WAIT.
        drop(accepted);
        drop(client);
        drop(first);
        bind_group(addr, 2, 16, &[]).expect("a new group beside TIME_WAIT connections");
    }
}
