//! Reloads that change the worker count: 4 → 2 → 3 with a room that must notice nothing, 2 → 4
//! with 400 clients that must end up spread over all four workers, and a loop connecting
//! throughout 4 → 2 → 4 → 2 → 4 (listeners closed when shrinking must not cost connection
//! attempts where `tcp_migrate_req` is on).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::common::*;
use crate::control::*;
use crate::fleet::{Fleet, StopOnDrop, connect_welcomed};
use crate::room::Room;
use crate::{CONTROL_TIMEOUT, SETTLE_TIMEOUT, room_server};

// ---------------------------------------------------------------------------------------------
// Worker count
// ---------------------------------------------------------------------------------------------

/// 4 → 2 → 3 workers with 30 clients: exactly that many workers afterwards (status and
/// `/proc`), every session held by one of them, nobody disconnected or told anything, one
/// message reaches everyone; the listening sockets follow the slot count.
#[test]
fn reload_changes_worker_count() {
    let server = room_server(4).start();
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 30, "c");
    let owners = room.owners(server.port(), &st.pids());
    assert!(
        owners.iter().collect::<HashSet<_>>().len() >= 3,
        "30 clients on fewer than 3 of 4 workers: {owners:?}"
    );
    assert_eq!(listening_sockets(server.addr()), 4);

    for (step, workers) in [2usize, 3].into_iter().enumerate() {
        let generation = 2 + step as u64;
        fs::write(server.config_path(), room_server(workers).render(&control)).expect("config");
        let out = server.run(&["reload"], CONTROL_TIMEOUT);
        expect_reload_ok(&out, generation, workers);
        let before = st.pids();
        st = wait_settled(&control, server.pid(), workers, generation, &before);
        let n = room.clients.len() as u64;
        assert_eq!(st.clients, n, "{st:?}");
        assert_eq!(
            st.workers.iter().map(|w| w.3).sum::<u64>(),
            n,
            "clients per worker in status: {st:?}"
        );
        assert_eq!(st.listen, vec![server.addr().to_string()]);
        let owners = room.owners(server.port(), &st.pids());
        let mut per: HashMap<i32, usize> = HashMap::new();
        for o in &owners {
            *per.entry(*o).or_default() += 1;
        }
        for w in &st.workers {
            assert_eq!(
                per.get(&w.1).copied().unwrap_or(0) as u64,
                w.3,
                "worker {} serves a different number of clients than status says",
                w.1
            );
        }
        wait_until(SETTLE_TIMEOUT, &format!("{workers} listening sockets"), || {
            (listening_sockets(server.addr()) == workers).then_some(())
        });
        // Nobody read anything (no leave, no notice): the probe is everyone's next line.
        room.quiet_check(step * 7, &format!("after {workers} workers"));
        // The new worker set accepts.
        room.join(&server, 1, "new");
        room.chat(room.clients.len() - 1, "hello from the newcomer");
    }
}

/// 2 → 4 workers with 400 clients: the sessions are spread over all four new workers (each
/// holds 15–35 % of them, in status and by `/proc`), nobody is disconnected or told anything,
/// and every line said after the reload reaches everyone exactly once, in one order.
#[test]
fn growing_spreads_the_sessions_over_every_worker() {
    const CLIENTS: usize = 400;
    const SENDERS: usize = 8;
    const LINES: u32 = 25;
    let server = room_server(2).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let fleet = Fleet::new();
    fleet.join_named(server.addr(), CLIENTS, SETTLE_TIMEOUT);

    fs::write(server.config_path(), room_server(4).render(&control)).expect("config");
    expect_reload_ok(&reload_at(&control), 2, 4);
    let after = wait_settled(&control, server.pid(), 4, 2, &st.pids());
    assert_eq!(after.clients, CLIENTS as u64, "{after:?}");
    let ports: Vec<u16> =
        (0..CLIENTS).map(|i| fleet.writer(i).local_addr().expect("address").port()).collect();
    let owners = workers_of(&ports, server.port(), &after.pids());
    for &(slot, pid, _, clients) in &after.workers {
        let share = clients as f64 / CLIENTS as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "slot {slot} holds {clients} of {CLIENTS} sessions: {after:?}"
        );
        let held = owners.iter().filter(|o| **o == Some(pid)).count();
        assert_eq!(held as u64, clients, "slot {slot}: sockets held vs status");
    }

    for n in 0..LINES {
        for s in 0..SENDERS {
            fleet.send(s, &format!("m {s} {n}")).expect("send a load line");
        }
    }
    let total = SENDERS * LINES as usize;
    fleet.wait(SETTLE_TIMEOUT, "every line at every client", |t| {
        t.iter().all(|x| x.chats.len() >= total || x.closed.is_some())
    });
    fleet.with(|t| {
        let reference = &t[0].chats;
        let mut next = [0u32; SENDERS];
        for &m in reference {
            let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
            assert_eq!(n, next[s], "client 0: sender u{s}'s lines lost, repeated or reordered");
            next[s] += 1;
        }
        for (i, x) in t.iter().enumerate() {
            assert!(x.closed.is_none(), "client {i} disconnected: {:?}", x.closed);
            assert_eq!(x.unexpected_count, 0, "client {i}: unexpected lines {:?}", x.unexpected);
            assert_eq!(x.chats, *reference, "client {i}: not the room's lines in the room's order");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Connection attempts while the worker count changes
// ---------------------------------------------------------------------------------------------

/// Is `net.ipv4.tcp_migrate_req` on in this network namespace?
fn tcp_migrate_req() -> bool {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|s| s.trim() == "1")
}

/// A loop connecting (and reading each welcome) as fast as it can while the worker count goes
/// 4 → 2 → 4 → 2 → 4. Growing never closes a listener, so every attempt during a grow must
/// succeed. Shrinking closes the removed slots' listeners; chatd relies on
/// `net.ipv4.tcp_migrate_req = 1` (docs/operations.md, "The sysctl") to move what is still
/// queued on them, so attempts during a shrink must all succeed only where that is set
/// (otherwise the failures are reported).
#[test]
fn connection_attempts_during_worker_count_changes() {
    let server = room_server(4).start();
    let control = server.control_socket();
    let addr = server.addr();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let stop = AtomicBool::new(false);
    // Which reload is running (until the old workers are gone): 0 none, else 1 + index into
    // `counts`.
    let phase = std::sync::atomic::AtomicUsize::new(0);
    let counts = [2usize, 4, 2, 4];
    let (ok, failures) = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop]);
        let connector = scope.spawn(|| {
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let during = phase.load(Ordering::SeqCst);
                match connect_welcomed(addr) {
                    // Dropped at once: the room sees it leave; nobody here minds.
                    Ok(_) => ok += 1,
                    Err(e) => failures.push((during.max(phase.load(Ordering::SeqCst)), e)),
                }
            }
            (ok, failures)
        });
        for (k, &workers) in counts.iter().enumerate() {
            let generation = 2 + k as u64;
            fs::write(server.config_path(), room_server(workers).render(&control)).unwrap();
            phase.store(1 + k, Ordering::SeqCst);
            let out = reload_at(&control);
            expect_reload_ok(&out, generation, workers);
            // A removed slot's listener lives until its old worker has exited: the phase lasts
            // until the old generation is gone.
            st = wait_settled(&control, server.pid(), workers, generation, &st.pids());
            phase.store(0, Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
        connector.join().expect("connect loop")
    });
    assert!(ok > 0, "the connect loop never connected");
    let shrinking = |p: usize| p > 0 && (p == 1 || counts[p - 1] < counts[p - 2]);
    let (during_shrink, other): (Vec<_>, Vec<_>) =
        failures.iter().partition(|(p, _)| shrinking(*p));
    assert!(
        other.is_empty(),
        "{} connection attempts failed outside a shrinking reload: {other:?}",
        other.len()
    );
    if tcp_migrate_req() {
        assert!(
            during_shrink.is_empty(),
            "{} connection attempts failed while shrinking, with tcp_migrate_req = 1: \
             {during_shrink:?}",
            during_shrink.len()
        );
    }
    eprintln!(
        "{ok} connections; {} failed while shrinking (tcp_migrate_req {}): {:?}",
        during_shrink.len(),
        if tcp_migrate_req() { "on" } else { "off, not asserted" },
        during_shrink.iter().take(3).collect::<Vec<_>>()
    );
}
