//! How many clients fit: `max_clients` and `max_clients_per_ip` count the whole room (not one
//! worker), and a worker out of file descriptors keeps serving who is in, lets the rest wait
//! without a busy loop, and takes them in as descriptors free up.

use std::io;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::proc_usage::{cpu_seconds, open_fds};
use crate::raw_client::{RawClient, connect_from};
use crate::room::{Room, room_server};

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
    // Lower the worker's open-files limit (soft and hard) so that exactly CAPACITY more clients
    // fit: a new descriptor takes the lowest free number, which must be below the limit
    // (descriptors already open above it stay usable), and the worker keeps FD_RESERVE of them
    // for reloads (docs/operations.md, "More connections: LimitNOFILE").
    const CAPACITY: usize = 8;
    const FD_RESERVE: usize = 8;
    let fds = open_fds(worker);
    let free = CAPACITY + FD_RESERVE;
    let limit = (free..)
        .find(|&l| l - fds.iter().filter(|&&fd| (fd as usize) < l).count() == free)
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
