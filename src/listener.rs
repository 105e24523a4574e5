//! The listening sockets of the worker slots.
//!
//! Every slot has its own `SO_REUSEPORT` socket per listen address, so the kernel spreads new
//! connections over the slots' accept queues. The supervisor binds them once per slot and keeps
//! them open for the slot's whole life; workers get them across exec. A worker dying therefore
//! never closes a listener, and connections queued on it wait for the replacement instead of
//! being reset (closing one socket of a reuseport group aborts what is queued on it).

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::io;
use std::net::SocketAddr;

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

/// Binds `slots` listeners on `addr`. With port 0 the first bind picks a free port and the
/// others join it, so every slot shares one port.
pub fn bind_group(addr: SocketAddr, slots: usize, backlog: u32) -> io::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(slots);
    let mut addr = addr;
    for _ in 0..slots {
        let socket = bind(addr, backlog)?;
        if addr.port() == 0 {
            addr = local_addr(&socket)?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// The address a socket is bound to.
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
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
    fn port_zero_group_shares_one_port() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = group.iter().map(|s| local_addr(s).unwrap().port()).collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]));
    }
}
