//! A reload when a worker has run out of file descriptors: the sessions it serves are still
//! handed over, not drained; and when the hand-off cannot start at all, `chatd reload` still
//! returns once the new generation serves.

use std::io;
use std::time::Duration;

use crate::common::*;
use crate::control::*;
use crate::room_server;

/// `chatd reload` is given this long; a reload that waits for a drain timeout takes longer.
const RELOAD_BOUND: Duration = Duration::from_secs(20);

/// The server runs with a soft limit of 64 open files (its workers inherit it) and one worker,
/// which takes clients until it stops accepting; one more connection waits in the queue. A
/// reload must hand every client over: none is told to reconnect or leaves, each is then held
/// by the new worker, and a line said after the reload reaches everyone.
#[test]
fn a_worker_out_of_file_descriptors_still_hands_its_sessions_over() {
    let server =
        room_server(1).open_files_limit(64).raw("[reload]\ndrain_timeout = \"5s\"").start();
    let control = server.control_socket();
    wait_settled(&control, server.pid(), 1, 1, &[]);
    let old = server.worker_pids();
    let port = server.port();

    // Join one client at a time until the worker stops accepting.
    let mut inside: Vec<Client> = Vec::new();
    let mut nicks: Vec<String> = Vec::new();
    let mut waiting = None;
    for i in 0..200 {
        let mut c = server.connect(&format!("c{i}"));
        let welcome =
            wait_until(LINE_TIMEOUT, "a welcome, or the worker to stop accepting", || {
                match c.read_line(Duration::from_millis(20)) {
                    Ok(line) => return Some(Some(line)),
                    Err(ReadError::Timeout) => {}
                    Err(e) => panic!("{}: {e}", c.label()),
                }
                let stopped = server.log_contains("out of file descriptors");
                (stopped && worker_of(c.local_port(), port, &old).is_none()).then_some(None)
            });
        let Some(welcome) = welcome else {
            waiting = Some(c);
            break;
        };
        let (nick, count) = parse_welcome(&welcome)
            .unwrap_or_else(|| panic!("{}: expected a welcome, got {welcome:?}", c.label()));
        assert_eq!(count, inside.len() + 1, "{nick}: online count");
        for other in &mut inside {
            other.expect_line(&format!("* {nick} joined ({count} online)"));
        }
        inside.push(c);
        nicks.push(nick);
    }
    let mut waiting = waiting.expect("the worker never stopped accepting");
    assert!(inside.len() > 10, "only {} clients fit under 64 open files", inside.len());
    eprintln!("{} clients inside, one waiting", inside.len());

    let out = run_chatd(&["reload", "--control", control.to_str().unwrap()], RELOAD_BOUND);
    assert!(out.status.success(), "chatd reload failed: {}", output_text(&out));
    let st = wait_settled(&control, server.pid(), 1, 2, &old);
    let new = st.pids();

    // Every client is held by the new worker: handed over, not reconnected.
    let ports: Vec<u16> = inside.iter().map(Client::local_port).collect();
    let owners = workers_of(&ports, port, &new);
    for (nick, owner) in nicks.iter().zip(&owners) {
        assert_eq!(*owner, Some(new[0]), "{nick}'s connection is not held by the new worker");
    }

    // The waiting connection gets in now; then a line reaches everyone, and nobody read anything
    // but join notices before it (no restart notice, nobody left).
    let (late, _) = waiting.expect_welcome();
    inside[0].send_line("after the reload");
    for c in inside.iter_mut().chain([&mut waiting]) {
        let line = c
            .read_until(LINE_TIMEOUT, |l| !l.contains(" joined ("))
            .unwrap_or_else(|e| panic!("{}: {e}", c.label()));
        assert_eq!(
            parse_chat(&line).map(|p| (p.nick, p.text)),
            Some((nicks[0].clone(), "after the reload".to_string())),
            "{}: {:?}",
            c.label(),
            c.transcript()
        );
    }
    assert!(
        inside.iter().all(|c| c.transcript().iter().any(|l| l.contains(&late))),
        "the late client's join was not seen by everyone"
    );
    assert!(!server.log_contains("draining"), "the reload drained instead of handing over");
}

/// The old worker cannot receive the hand-off channel at all (its limit was lowered below what
/// it holds). It keeps serving its clients in a drain, and `chatd reload` returns as soon as the
/// new generation serves, not when the drain ends.
#[test]
fn a_reload_whose_hand_off_cannot_start_returns_without_waiting_for_the_drain() {
    let server = room_server(1).raw("[reload]\ndrain_timeout = \"10m\"").start();
    let control = server.control_socket();
    wait_settled(&control, server.pid(), 1, 1, &[]);
    let old = server.worker_pids()[0];
    let mut room = crate::room::Room::default();
    room.join(&server, 3, "c");

    // No descriptor number is free below a soft limit of 3: the channel cannot arrive.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit writes the current limits through the pointer given and reads nothing.
    let rc = unsafe { libc::prlimit(old, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());
    limit.rlim_cur = 3;
    // SAFETY: prlimit reads the new limits through the pointer given and writes nothing.
    let rc = unsafe { libc::prlimit(old, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());

    let out = run_chatd(&["reload", "--control", control.to_str().unwrap()], RELOAD_BOUND);
    assert!(out.status.success(), "chatd reload failed: {}", output_text(&out));
    server.wait_for_log("draining", LINE_TIMEOUT);
    // The old worker still serves its clients, with the new generation's in the same room.
    let (mut fresh, nick, count) = server.join("fresh");
    assert_eq!(count, 4, "{nick}: online count");
    for c in &mut room.clients {
        c.expect_line(&format!("* {nick} joined (4 online)"));
    }
    room.chat(0, "still here");
    fresh.expect_chat(&room.nicks[0], "still here");
    assert!(process_alive(old), "the draining worker is gone");
}
