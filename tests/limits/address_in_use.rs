//! A configured address another process already listens on: `chatd serve` refuses to start
//! (`cannot listen on IP:PORT: address already in use by another process`, exit 1) instead of
//! joining a stranger's `SO_REUSEPORT` group and splitting the room; a reload that would add
//! such an address fails the same way. Its own slots' sockets are no strangers: a reload that
//! adds slots on a port chatd already listens on, or names that port anew, still works.

use std::fs;
use std::net::SocketAddr;
use std::process::Output;

use socket2::{Domain, Protocol, Socket, Type};

use crate::common::*;

/// Runs `chatd serve` on `listen` with a config of its own; returns once it has exited.
fn serve(listen: &[SocketAddr]) -> Output {
    let dir = tempfile::tempdir().expect("create temp dir");
    let listen: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    let config = ServerBuilder::new().listen(&listen).workers(2).render(&dir.path().join("c.sock"));
    let path = dir.path().join("chatd.toml");
    fs::write(&path, config).expect("write config");
    run_chatd(&["serve", "--config", path.to_str().expect("utf-8 temp path")], START_TIMEOUT)
}

fn assert_refused(out: &Output, addr: SocketAddr) {
    let text = output_text(out);
    assert_eq!(out.status.code(), Some(1), "chatd serve on {addr} in use: {text}");
    let message = format!("cannot listen on {addr}: address already in use by another process");
    assert!(text.contains(&message), "no {message:?} in: {text}");
}

/// A listening socket with `SO_REUSEPORT`, as any server of the same user could open one.
fn reuseport_listener() -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind");
    socket.listen(16).expect("listen");
    let addr = socket.local_addr().expect("local addr").as_socket().expect("inet");
    (socket, addr)
}

#[test]
fn a_second_chatd_on_the_same_port_refuses_to_start() {
    let server = ServerBuilder::new().workers(2).start();
    let addr = server.addr();
    assert_refused(&serve(&[addr]), addr);
    // The first one still has the port to itself: one room, one guest sequence.
    assert_eq!(listening_sockets(addr), 2);
    let (_first, _, n) = server.join("first");
    let (_second, _, m) = server.join("second");
    assert_eq!((n, m), (1, 2));
}

#[test]
fn a_port_another_server_listens_on_is_refused() {
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = plain.local_addr().expect("local addr");
    assert_refused(&serve(&[addr]), addr);

    let (_stranger, addr) = reuseport_listener();
    assert_refused(&serve(&[addr]), addr);
    assert_eq!(listening_sockets(addr), 1, "chatd joined the stranger's group");
}

#[test]
fn reload_adds_slots_to_its_own_port_but_refuses_a_strangers() {
    let builder = ServerBuilder::new().workers(2);
    let server = builder.clone().start();
    let addr = server.addr();
    let control = server.control_socket();

    fs::write(server.config_path(), builder.clone().workers(3).render(&control)).unwrap();
    let out = server.run(&["reload"], START_TIMEOUT);
    assert!(out.status.success(), "reload to 3 workers: {}", output_text(&out));
    assert_eq!(listening_sockets(addr), 3);

    // The same address, now by its number: the port is held by chatd itself, no stranger.
    let own = addr.to_string();
    fs::write(server.config_path(), builder.clone().workers(3).listen(&[&own]).render(&control))
        .unwrap();
    let out = server.run(&["reload"], START_TIMEOUT);
    assert!(out.status.success(), "reload onto its own port: {}", output_text(&out));
    wait_until(START_TIMEOUT, "the old listeners to close", || {
        (listening_sockets(addr) == 3).then_some(())
    });

    let (_stranger, taken) = reuseport_listener();
    let listen = [own, taken.to_string()];
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    fs::write(server.config_path(), builder.workers(3).listen(&listen).render(&control)).unwrap();
    let out = server.run(&["reload"], START_TIMEOUT);
    assert!(!out.status.success(), "reload onto a stranger's port: {}", output_text(&out));
    let message = format!("cannot listen on {taken}: address already in use by another process");
    assert!(output_text(&out).contains(&message), "no {message:?} in: {}", output_text(&out));
    assert_eq!(listening_sockets(taken), 1, "chatd joined the stranger's group");
    // Nothing changed: the room still answers on its port.
    let (_c, _, n) = server.join("after");
    assert_eq!(n, 1);
}
