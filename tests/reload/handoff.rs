//! Sessions handed from one worker generation to the next: under load with a thousand clients
//! and a connect loop, on SIGHUP, in a quiet room where the new workers have seen no room event
//! of their own, and when a new worker dies mid-hand-off (the slot stays served). Nobody may be
//! disconnected, and no room line may be lost, duplicated, reordered or replayed.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::*;
use crate::control::*;
use crate::fleet::{Fleet, StopOnDrop, connect_welcomed};
use crate::room::Room;
use crate::{SETTLE_TIMEOUT, room_server};

// ---------------------------------------------------------------------------------------------
// Reload under load
// ---------------------------------------------------------------------------------------------

/// 1,000 renamed clients, 20 of them chatting every 50 ms (half of them writing each line in
/// two parts a round apart, so an unfinished input line is always in the server when a session
/// moves), a loop opening new connections throughout, and 5 reloads in a row. Every original client must end with exactly the same
/// sequence of chat lines — every line sent, once, in one order — under unchanged nicks;
/// nobody is disconnected, no connection attempt fails, and every reload replaces every
/// worker.
///
/// Per client, lines are classified as they arrive (see `Tally::line` in fleet.rs): its
/// welcome, its own rename, other guests' renames and joins, load lines `<uS> m S N`,
/// `<uJ> final J`, and `* you are already uI`. Anything else — a leave, a restart notice, an
/// error — is counted as unexpected and fails the test.
#[test]
fn reload_under_load_loses_nothing() {
    const ORIGINALS: usize = 1000;
    const SENDERS: usize = 20;
    const SEND_EVERY: Duration = Duration::from_millis(50);
    /// Load lines sent but not yet read by client 0 before the senders pause.
    const MAX_IN_FLIGHT: usize = 10 * SENDERS;
    const CONNECT_EVERY: Duration = Duration::from_millis(50);
    const RELOADS: u64 = 5;
    const WAIT: Duration = Duration::from_secs(120);

    let test_start = Instant::now();
    let server = room_server(4).start();
    let control = server.control_socket();
    let addr = server.addr();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);

    let fleet = Fleet::new();
    fleet.join_named(addr, ORIGINALS, WAIT);
    let connected_at = test_start.elapsed();

    let stop_senders = AtomicBool::new(false);
    let stop_connecting = AtomicBool::new(false);
    let reloading = AtomicBool::new(false);
    let mut reload_times = Vec::new();
    let (sent, connects) = thread::scope(|scope| {
        // If the main thread panics, the scope waits for these threads: stop them first.
        let _stop = StopOnDrop(&[&stop_senders, &stop_connecting]);
        let senders = scope.spawn(|| {
            let mut ws: Vec<TcpStream> = (0..SENDERS).map(|s| fleet.writer(s)).collect();
            let mut counts = vec![0u32; SENDERS];
            let mut total = 0usize;
            let mut started = false;
            for w in &ws {
                w.set_nodelay(true).expect("nodelay");
            }
            let mut next = Instant::now();
            while !stop_senders.load(Ordering::SeqCst) {
                // Back-pressure: on a busy machine, wait rather than pile up an ever longer
                // backlog (client 0 stands for the room: everyone gets the same lines).
                while total > MAX_IN_FLIGHT + fleet.with(|t| t[0].chats.len())
                    && !stop_senders.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(5));
                    next = Instant::now();
                }
                for (s, w) in ws.iter_mut().enumerate() {
                    // Odd senders split every line over two writes a round apart, so the
                    // server always holds an unfinished line of theirs — also when it hands
                    // the session over. The line's end completes it the next round.
                    let data = if s % 2 == 1 {
                        let tail = if started { format!("{}\n", counts[s]) } else { String::new() };
                        format!("{tail}m {s} ")
                    } else {
                        format!("m {s} {}\n", counts[s])
                    };
                    w.write_all(data.as_bytes()).unwrap_or_else(|e| panic!("sender u{s}: {e}"));
                    if s % 2 == 0 || started {
                        counts[s] += 1;
                        total += 1;
                    }
                }
                started = true;
                // Pacing, not synchronisation.
                next += SEND_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            for (s, w) in ws.iter_mut().enumerate().filter(|(s, _)| s % 2 == 1 && started) {
                w.write_all(format!("{}\n", counts[s]).as_bytes()).expect("last line end");
                counts[s] += 1;
            }
            counts
        });
        let connector = scope.spawn(|| {
            // (ok, failures, attempts that overlapped a reload)
            let (mut ok, mut failures, mut during) = (0usize, Vec::new(), 0usize);
            let mut next = Instant::now();
            while !stop_connecting.load(Ordering::SeqCst) {
                let overlapping = reloading.load(Ordering::SeqCst);
                match connect_welcomed(addr) {
                    Ok((stream, nick, rest)) => {
                        fleet.add(stream, None, Some(nick), rest);
                        ok += 1;
                    }
                    Err(e) => failures.push(e),
                }
                if overlapping || reloading.load(Ordering::SeqCst) {
                    during += 1;
                }
                next += CONNECT_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (ok, failures, during)
        });

        // Load is flowing: the first client has read some load lines from every sender.
        let flowing = |fleet: &Fleet, at_least: usize| {
            fleet.wait(WAIT, &format!("{at_least} load lines at client 0"), |t| {
                t[0].chats.len() >= at_least
            })
        };
        flowing(&fleet, 2 * SENDERS);
        for r in 1..=RELOADS {
            let before = st.clone();
            let generation = before.generation + 1;
            reloading.store(true, Ordering::SeqCst);
            let t0 = Instant::now();
            let out = reload_at(&control);
            let took = t0.elapsed();
            reloading.store(false, Ordering::SeqCst);
            expect_reload_ok(&out, generation, 4);
            st = wait_settled(&control, server.pid(), 4, generation, &before.pids());
            let logged = reload_duration(&server, generation);
            eprintln!(
                "reload {r}: `chatd reload` {:.3}s, logged {logged:.3}s, workers {:?} -> {:?}",
                took.as_secs_f64(),
                before.pids(),
                st.pids()
            );
            reload_times.push((took, logged));
            // More traffic after each reload before the next one.
            let now = fleet.with(|t| t[0].chats.len());
            flowing(&fleet, now + 2 * SENDERS);
        }
        stop_connecting.store(true, Ordering::SeqCst);
        let connects = connector.join().expect("connect loop");
        stop_senders.store(true, Ordering::SeqCst);
        let sent = senders.join().expect("senders");
        (sent, connects)
    });
    let (connected_ok, failures, overlapping) = connects;

    // Every original client still holds its nick: `/nick u<i>` is answered `already`.
    for i in 0..ORIGINALS {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick after reloads");
    }
    fleet.wait(WAIT, "`* you are already u<i>` at every original client", |t| {
        t.iter().take(ORIGINALS).all(|x| x.already)
    });
    // A final marker, numbered after every load line: once everyone has it, all is delivered.
    let last = ORIGINALS - 1;
    fleet.send(last, &format!("final {last}")).expect("send final");
    let total_clients = fleet.with(|t| t.len());
    fleet.wait(WAIT, "the final marker at every client", |t| t.iter().all(|x| x.finals >= 1));
    let end_status = status_at(&control);

    // ----- verdict ------------------------------------------------------------------------
    assert!(failures.is_empty(), "{} connection attempts failed: {failures:?}", failures.len());
    assert!(connected_ok > 0, "the connect loop never connected");
    assert!(
        overlapping > 0,
        "no connection attempt overlapped a reload ({connected_ok} attempts); test ineffective"
    );
    fleet.with(|t| {
        for (i, x) in t.iter().enumerate() {
            let who = format!("client #{i} ({:?}, then {:?})", x.nick, x.want_nick);
            assert!(x.closed.is_none(), "{who} disconnected: {:?}", x.closed);
            assert!(
                x.unexpected_count == 0,
                "{who} read {} unexpected lines, e.g. {:?}",
                x.unexpected_count,
                x.unexpected
            );
            assert_eq!(x.finals, 1, "{who}: final marker count");
        }
        // The reference order: client 0's. Each sender's lines exactly once, in send order.
        let reference = &t[0].chats;
        let mut next = vec![0u32; SENDERS];
        for &m in reference {
            let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
            assert!(s < SENDERS, "load line from unknown sender {s}");
            assert_eq!(
                n,
                next[s],
                "client 0: after line {} of sender u{s}, line {n}: lost, repeated or reordered",
                next[s] as i64 - 1
            );
            next[s] += 1;
        }
        assert_eq!(next, sent, "client 0: load lines received per sender vs sent");
        for (i, x) in t.iter().enumerate().take(ORIGINALS).skip(1) {
            if x.chats != *reference {
                let at = x.chats.iter().zip(reference).position(|(a, b)| a != b);
                panic!(
                    "client {i} (u{i}) read {} load lines, client 0 read {}; first difference \
                     at #{at:?}",
                    x.chats.len(),
                    reference.len()
                );
            }
        }
        // Late joiners (connected during the load and the reloads): a suffix of the same order.
        for (i, x) in t.iter().enumerate().skip(ORIGINALS) {
            let tail = &reference[reference.len() - x.chats.len().min(reference.len())..];
            assert!(
                x.chats.len() <= reference.len() && x.chats == tail,
                "late client #{i} ({:?}): its {} load lines are not the last {} of the room's",
                x.nick,
                x.chats.len(),
                x.chats.len()
            );
        }
    });
    assert_eq!(end_status.clients as usize, total_clients, "status clients: {end_status:?}");
    assert_eq!(end_status.generation, 1 + RELOADS);
    let total_sent: u32 = sent.iter().sum();
    eprintln!(
        "{ORIGINALS} clients connected and renamed in {:.1}s; {total_sent} load lines sent; \
         {connected_ok} connections during the run ({overlapping} overlapping a reload); \
         reloads (command s, logged s): {:?}; total {:.1}s",
        connected_at.as_secs_f64(),
        reload_times.iter().map(|(a, b)| (a.as_secs_f64(), *b)).collect::<Vec<_>>(),
        test_start.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------------

/// SIGHUP to the supervisor reloads: generation 2, every worker replaced, clients stay.
#[test]
fn sighup_reloads() {
    let server = room_server(3).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 3, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 5, "c");

    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload to generation 2 done", SETTLE_TIMEOUT);
    let after = wait_settled(&control, server.pid(), 3, 2, &st.pids());
    assert_eq!(after.clients, 5);
    let owners = room.owners(server.port(), &after.pids());
    assert_eq!(owners.len(), 5);
    room.quiet_check(2, "after SIGHUP");

    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload to generation 3 done", SETTLE_TIMEOUT);
    wait_settled(&control, server.pid(), 3, 3, &after.pids());
    room.quiet_check(4, "after the second SIGHUP");
}

// ---------------------------------------------------------------------------------------------
// Reloads with a quiet room
// ---------------------------------------------------------------------------------------------

/// Two reloads in a row with nothing said in between (the second generation's workers have
/// seen no room event of their own when they hand the sessions on): still nothing is replayed,
/// lost or duplicated — the probe line is every client's very next line.
#[test]
fn back_to_back_reloads_in_a_quiet_room() {
    let server = room_server(2).start();
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 6, "c");
    room.chat(0, "some history");
    for generation in 2..=4 {
        let out = reload_at(&control);
        expect_reload_ok(&out, generation, 2);
        st = wait_settled(&control, server.pid(), 2, generation, &st.pids());
    }
    room.quiet_check(5, "first line after three quiet reloads");
    room.quiet_check(1, "and another");
}

// ---------------------------------------------------------------------------------------------
// A new worker dying in the middle of a hand-off
// ---------------------------------------------------------------------------------------------

/// The new worker of slot 0 is killed as soon as it is ready, while the old one hands it 750 or so
/// sessions. That is a worker crash (docs/control.md, "Health": it may cost the sessions it held or
/// that were in transit to it), but the reload must still end with an answer, the room must see
/// every lost client leave (status counts exactly the clients still connected), and the next reload
/// must work.
#[test]
fn new_worker_crash_during_handoff_does_not_wedge_the_reload() {
    const CLIENTS: usize = 1500;
    const REPLY: Duration = Duration::from_secs(30);
    let server = room_server(2).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let fleet = Fleet::new();
    for i in 0..CLIENTS {
        let stream = TcpStream::connect_timeout(&server.addr(), CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
        fleet.add(stream, None, None, Vec::new());
    }
    fleet.wait(SETTLE_TIMEOUT, "every welcome", |t| t.iter().all(|x| x.nick.is_some()));
    wait_until(SETTLE_TIMEOUT, "status to count every client", || {
        (status(&server).clients as usize == CLIENTS).then_some(())
    });

    let ctl = control.clone();
    let reload =
        thread::spawn(move || run_chatd(&["reload", "--control", ctl.to_str().unwrap()], REPLY));
    let started = wait_until(START_TIMEOUT, "slot 0's generation-2 worker", || {
        server
            .log_lines()
            .into_iter()
            .find(|l| l.contains("slot 0: started worker pid") && l.ends_with("(generation 2)"))
    });
    let pid: i32 = started
        .split("started worker pid ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started:?}"));
    server.wait_for_log(&format!("worker pid {pid} ready"), START_TIMEOUT);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the new worker");
    let out = reload.join().unwrap_or_else(|_| {
        panic!("`chatd reload` got no answer within {REPLY:?} after the new worker died")
    });
    eprintln!("reload after the crash: {}", output_text(&out).trim());

    // Whatever was lost left the room: status counts exactly the connections still open.
    wait_until(SETTLE_TIMEOUT, "status to count exactly the clients still connected", || {
        let open = fleet.with(|t| t.iter().filter(|x| x.closed.is_none()).count());
        (status(&server).clients as usize == open).then_some(())
    });
    let open = fleet.with(|t| t.iter().filter(|x| x.closed.is_none()).count());
    assert!(open > 0, "every client was lost");
    // The server is not stuck in that reload: the next one works.
    let now = status(&server);
    let out = reload_at(&control);
    expect_reload_ok(&out, now.generation + 1, 2);
    let after = wait_settled(&control, server.pid(), 2, now.generation + 1, &now.pids());
    assert!(after.pids().iter().all(|p| !st.pids().contains(p)));
    assert_eq!(after.clients as usize, open, "clients after the next reload");
}

/// During a reload a slot always has a worker serving it (docs/control.md, "Health"). Slot 0's new
/// worker is killed the moment it reports ready, eight reloads in a row: by then the old worker has
/// been told to hand over and no longer accepts (the kill lands mid-hand-off or just after it), so
/// the new worker is the slot's only server. Its replacement must accept at once every time — a
/// newcomer is welcomed within 3 s — not after a crash backoff that doubles with each of these
/// young deaths.
#[test]
fn a_slot_keeps_serving_while_its_new_workers_die() {
    const ROUNDS: u64 = 8;
    const PROMPT: Duration = Duration::from_secs(3);
    let server = room_server(1).start();
    let control = server.control_socket();
    wait_settled(&control, server.pid(), 1, 1, &[]);
    for generation in 2..2 + ROUNDS {
        let ctl = control.clone();
        let reload = thread::spawn(move || {
            run_chatd(&["reload", "--control", ctl.to_str().unwrap()], SETTLE_TIMEOUT)
        });
        let started = format!("(generation {generation})");
        let line = wait_until(START_TIMEOUT, "the new worker", || {
            server.log_lines().into_iter().find(|l| {
                l.contains("slot 0: started worker pid ") && l.ends_with(started.as_str())
            })
        });
        let pid: i32 = line
            .split("started worker pid ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        server.wait_for_log(&format!("worker pid {pid} ready"), START_TIMEOUT);
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the new worker");
        // A newcomer the old worker accepted just before its hand-off began moves with the
        // sessions and may be lost with the dead worker (a crash's cost); it tries again.
        let t0 = Instant::now();
        while let Err(e) = connect_welcomed(server.addr()) {
            assert!(t0.elapsed() < PROMPT, "generation {generation}: a newcomer: {e}");
        }
        let waited = t0.elapsed();
        assert!(waited < PROMPT, "generation {generation}: a newcomer waited {waited:?}");
        let out = reload.join().expect("the reload thread");
        eprintln!("generation {generation}: {}", output_text(&out).trim());
        wait_settled(&control, server.pid(), 1, generation, &[pid]);
    }
}
