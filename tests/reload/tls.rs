//! TLS sessions across reloads: the session moves with its socket, so clients keep talking
//! through several reloads without a new handshake (their KeyUpdates honoured before and after
//! a hand-off), a reload with a new certificate serves it to new connections while live ones
//! keep theirs, and a thousand TLS clients beside a thousand plain ones go through five reloads
//! losing nothing.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::control::*;
use crate::fleet::{Fleet, StopOnDrop, connect_welcomed};
use crate::room_server;

/// A throwaway CA and a first server certificate (serial 1).
fn pki() -> (tempfile::TempDir, Pki, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("server", 1);
    (dir, pki, cert, key)
}

/// The serial number of the certificate a new TLS connection to `addr` is shown (Python `ssl`).
fn served_serial(pki: &Pki, addr: std::net::SocketAddr) -> String {
    let script = format!(
        "import socket, ssl\nctx = ssl.create_default_context(cafile={:?})\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {})), \
         server_hostname='127.0.0.1')\nprint(s.getpeercert()['serialNumber'])\n",
        pki.ca.display().to_string(),
        addr.port()
    );
    let out = tool("python3", &["-c", &script], &pki.dir);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Six TLS clients (Python `ssl`) and an `openssl s_client` keep talking through three
/// reloads: every worker is replaced each time, yet no client handshakes again, none is
/// disconnected, and KeyUpdates work before and after each hand-off.
#[test]
fn tls_sessions_move_with_their_socket() {
    let (_dir, pki, cert, key) = pki();
    let server = start_tls(room_server(2), &cert, &key, &[]);
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let bridge = TlsBridge::start(&pki.ca, tls_addr(&server));
    let mut clients: Vec<(Client, String)> = Vec::new();
    for i in 0..6 {
        let mut c = bridge.connect(&format!("tls{i}"));
        let (nick, _) = c.expect_welcome();
        for (other, _) in &mut clients {
            other.next_line();
        }
        clients.push((c, nick));
    }
    let mut s = Tool::s_client(tls_addr(&server), &pki.ca, &[]);
    let s_nick = parse_welcome(&s.expect("* Welcome")).expect("welcome").0;
    for (c, _) in &mut clients {
        c.expect_line(&format!("* {s_nick} joined (7 online)"));
    }
    for r in 0..3u64 {
        s.send(if r % 2 == 0 { "K" } else { "k" });
        s.expect("KEYUPDATE");
        let before = st.clone();
        expect_reload_ok(&reload_at(&control), 2 + r, 2);
        st = wait_settled(&control, server.pid(), 2, 2 + r, &before.pids());
        s.send(if r % 2 == 0 { "k" } else { "K" });
        s.expect("KEYUPDATE");
        s.send(&format!("s_client after reload {r}"));
        s.expect(&format!("<{s_nick}> s_client after reload {r}"));
        for (c, _) in &mut clients {
            c.expect_chat(&s_nick, &format!("s_client after reload {r}"));
        }
        for i in 0..clients.len() {
            let line = format!("tls{i} after reload {r}");
            clients[i].0.send_line(&line);
            let nick = clients[i].1.clone();
            for (c, _) in &mut clients {
                c.expect_chat(&nick, &line);
            }
            s.expect(&format!("<{nick}> {line}"));
        }
    }
    assert_eq!(bridge.handshakes(), 6, "no new handshake: {:?}", bridge.events());
    assert!(!bridge.events().iter().any(|e| e.starts_with("closed")), "{:?}", bridge.events());
    assert!(!server.log_contains("refused"), "no failed handshake during the reloads");
}

/// A handshake under way when a reload starts is finished by the old worker, whose hand-off
/// waits for it; then the session moves like any other. The client (Python `ssl` over memory
/// buffers, so the test decides when each flight leaves) has had the server's answer to its
/// ClientHello and holds back its Finished until the old worker is handing over.
#[test]
fn a_handshake_under_way_finishes_across_a_reload() {
    let (_dir, pki, cert, key) = pki();
    let server = start_tls(room_server(1), &cert, &key, &[]);
    let control = server.control_socket();
    let before = wait_settled(&control, server.pid(), 1, 1, &[]);
    let (mut watcher, _, _) = server.join("watcher");
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
sock = socket.create_connection(("127.0.0.1", {port}))
sock.settimeout(20)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
def step():
    try:
        tls.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False
step()
sock.sendall(out.read())
while not step():
    inc.write(sock.recv(65536))
print("server answered", flush=True)
input()
sock.sendall(out.read())
def read_line():
    data = b""
    while not data.endswith(b"\n"):
        try:
            data += tls.read(65536)
        except ssl.SSLWantReadError:
            inc.write(sock.recv(65536))
    return data.decode().strip()
print("got", read_line(), flush=True)
input()
tls.write(b"hello after the reload\n")
sock.sendall(out.read())
print("got", read_line(), flush=True)
"#,
        ca = pki.ca.display().to_string(),
        port = tls_addr(&server).port()
    );
    let mut client = Tool::start("python3", &["-c", &script]);
    client.expect("server answered");
    let reload = thread::spawn(move || reload_at(&control));
    server.wait_for_log("handing sessions over to the next generation", LINE_TIMEOUT);
    client.send("go");
    let welcome = client.expect("got * Welcome");
    let nick = parse_welcome(welcome.trim_start_matches("got ")).expect("welcome").0;
    watcher.expect_line(&format!("* {nick} joined (2 online)"));
    expect_reload_ok(&reload.join().expect("reload"), 2, 1);
    // The old worker is gone: the session lives on in the new one.
    wait_settled(&server.control_socket(), server.pid(), 1, 2, &before.pids());
    client.send("go on");
    client.expect(&format!("<{nick}> hello after the reload"));
    watcher.expect_chat(&nick, "hello after the reload");
    assert!(!server.log_contains("refused"), "no failed handshake");
}

/// New certificate files and a reload: new connections are shown the new certificate, the
/// sessions that were live keep theirs and keep chatting, also while a loop keeps connecting
/// new TLS clients through the reload.
#[test]
fn a_reload_rotates_the_certificate() {
    let (_dir, pki, cert, key) = pki();
    let server = start_tls(room_server(2), &cert, &key, &[]);
    let control = server.control_socket();
    let addr = tls_addr(&server);
    assert_eq!(served_serial(&pki, addr), "01");
    let bridge = TlsBridge::start(&pki.ca, addr);
    let mut old = bridge.connect("old");
    let (old_nick, _) = old.expect_welcome();

    let stop = AtomicBool::new(false);
    let serials = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop]);
        let connector = scope.spawn(|| {
            let mut serials = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                serials.push(served_serial(&pki, addr));
            }
            serials
        });
        let (new_cert, new_key) = pki.issue("next", 2);
        std::fs::copy(&new_cert, &cert).expect("replace the certificate");
        std::fs::copy(&new_key, &key).expect("replace the key");
        expect_reload_ok(&reload_at(&control), 2, 2);
        old.send_line("still here");
        expect_own_line(&mut old, &old_nick, "still here");
        stop.store(true, Ordering::SeqCst);
        connector.join().expect("connect loop")
    });
    assert_eq!(served_serial(&pki, addr), "02", "the new certificate after the reload");
    assert!(serials.iter().all(|s| s == "01" || s == "02"), "{serials:?}");
    assert_eq!(bridge.handshakes(), 1, "the old session did not handshake again");
    old.send_line("after the rotation");
    expect_own_line(&mut old, &old_nick, "after the rotation");
}

/// Reads until `nick`'s chat line `text`, past the joins and leaves of the connect loop.
fn expect_own_line(c: &mut Client, nick: &str, text: &str) {
    loop {
        let line = c.next_line();
        if parse_chat(&line).is_some_and(|l| l.nick == nick && l.text == text) {
            return;
        }
        assert!(line.starts_with("* "), "only joins and leaves may come first: {line:?}");
    }
}

/// 1,000 TLS clients (Python `ssl`) and 1,000 plain ones on four workers, 20 of them (half
/// TLS) chatting, a loop connecting TLS and plain clients in turn, and five reloads: every
/// client ends with the same sequence of chat lines, each exactly once; nobody is disconnected;
/// no connection attempt or handshake fails; no TLS client handshakes twice.
#[test]
fn a_thousand_tls_and_a_thousand_plain_clients_through_five_reloads() {
    const PER_KIND: usize = 1000;
    const SENDERS: usize = 20;
    const SEND_EVERY: Duration = Duration::from_millis(50);
    const MAX_IN_FLIGHT: usize = 10 * SENDERS;
    const CONNECT_EVERY: Duration = Duration::from_millis(50);
    const RELOADS: u64 = 5;
    const WAIT: Duration = Duration::from_secs(180);

    let test_start = Instant::now();
    let (_dir, pki, cert, key) = pki();
    let server = start_tls(room_server(4), &cert, &key, &[]);
    let control = server.control_socket();
    let plain_addr = server.addr();
    let bridge = TlsBridge::start(&pki.ca, tls_addr(&server));
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);

    // Client i: TLS when i is even. Everyone renames itself u<i>.
    let fleet = Fleet::new();
    let originals = 2 * PER_KIND;
    for i in 0..originals {
        let addr = if i % 2 == 0 { bridge.addr } else { plain_addr };
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
        fleet.add(stream, Some(format!("u{i}")), None, Vec::new());
    }
    fleet.wait(WAIT, "every welcome", |t| t.iter().all(|x| x.nick.is_some()));
    for i in 0..originals {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick");
    }
    fleet.wait(WAIT, "every client's own rename", |t| t.iter().all(|x| x.renamed));
    let connected_at = test_start.elapsed();

    let stop_senders = AtomicBool::new(false);
    let stop_connecting = AtomicBool::new(false);
    let (sent, connects) = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop_senders, &stop_connecting]);
        let senders = scope.spawn(|| {
            let mut ws: Vec<TcpStream> = (0..SENDERS).map(|s| fleet.writer(s)).collect();
            let mut counts = vec![0u32; SENDERS];
            let mut total = 0usize;
            let mut next = Instant::now();
            while !stop_senders.load(Ordering::SeqCst) {
                while total > MAX_IN_FLIGHT + fleet.with(|t| t[1].chats.len())
                    && !stop_senders.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(5));
                    next = Instant::now();
                }
                for (s, w) in ws.iter_mut().enumerate() {
                    w.write_all(format!("m {s} {}\n", counts[s]).as_bytes())
                        .unwrap_or_else(|e| panic!("sender u{s}: {e}"));
                    counts[s] += 1;
                    total += 1;
                }
                // Pacing, not synchronisation.
                next += SEND_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            counts
        });
        let connector = scope.spawn(|| {
            let (mut ok, mut failures) = (0usize, Vec::new());
            let mut next = Instant::now();
            while !stop_connecting.load(Ordering::SeqCst) {
                let addr = if ok % 2 == 0 { bridge.addr } else { plain_addr };
                match connect_welcomed(addr) {
                    Ok((stream, nick, rest)) => {
                        fleet.add(stream, None, Some(nick), rest);
                        ok += 1;
                    }
                    Err(e) => failures.push(e),
                }
                next += CONNECT_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (ok, failures)
        });
        let flowing = |at_least: usize| {
            fleet.wait(WAIT, &format!("{at_least} load lines at client 1"), |t| {
                t[1].chats.len() >= at_least
            })
        };
        flowing(2 * SENDERS);
        for r in 1..=RELOADS {
            let before = st.clone();
            let t0 = Instant::now();
            expect_reload_ok(&reload_at(&control), 1 + r, 4);
            st = wait_settled(&control, server.pid(), 4, 1 + r, &before.pids());
            eprintln!("reload {r}: {:.3}s", t0.elapsed().as_secs_f64());
            let now = fleet.with(|t| t[1].chats.len());
            flowing(now + 2 * SENDERS);
        }
        stop_connecting.store(true, Ordering::SeqCst);
        let connects = connector.join().expect("connect loop");
        stop_senders.store(true, Ordering::SeqCst);
        (senders.join().expect("senders"), connects)
    });
    let (connected_ok, failures) = connects;

    // The TLS senders' last lines may still be in the bridge: the final marker goes once the
    // room has numbered every load line, so whoever reads it has read them all.
    let total_sent: usize = sent.iter().map(|&n| n as usize).sum();
    fleet.wait(WAIT, "every load line at client 1", |t| t[1].chats.len() >= total_sent);
    let last = originals - 1;
    fleet.send(last, &format!("final {last}")).expect("send final");
    fleet.wait(WAIT, "the final marker at every client", |t| t.iter().all(|x| x.finals >= 1));

    assert!(failures.is_empty(), "{} connection attempts failed: {failures:?}", failures.len());
    let events = bridge.events();
    assert!(!events.iter().any(|e| e.contains("failed") || e.starts_with("closed")), "{events:?}");
    let tls_clients = PER_KIND + connected_ok.div_ceil(2);
    assert_eq!(bridge.handshakes(), tls_clients, "one handshake per TLS client, none again");
    fleet.with(|t| {
        let reference = &t[1].chats;
        let mut next = vec![0u32; SENDERS];
        for &m in reference {
            let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
            assert_eq!(n, next[s], "client 1: sender u{s}: lost, repeated or reordered");
            next[s] += 1;
        }
        assert_eq!(next, sent, "client 1: load lines received per sender vs sent");
        for (i, x) in t.iter().enumerate() {
            let who = format!("client #{i} ({})", if i % 2 == 0 { "tls" } else { "plain" });
            assert!(x.closed.is_none(), "{who} disconnected: {:?}", x.closed);
            assert_eq!(x.unexpected_count, 0, "{who}: unexpected lines {:?}", x.unexpected);
            assert_eq!(x.finals, 1, "{who}: final marker count");
            if i < originals {
                if x.chats != *reference {
                    let at = x.chats.iter().zip(reference).position(|(a, b)| a != b);
                    let around = |v: &[u32]| -> Vec<(u32, u32)> {
                        let from = at.unwrap_or(v.len().min(reference.len())).saturating_sub(3);
                        v.iter().skip(from).take(8).map(|m| (m >> 20, m & 0xFFFFF)).collect()
                    };
                    panic!(
                        "{who} read {} load lines, client 1 read {}; first difference at \
                         #{at:?}: {:?} vs client 1's {:?}",
                        x.chats.len(),
                        reference.len(),
                        around(&x.chats),
                        around(reference)
                    );
                }
            } else {
                let tail = &reference[reference.len() - x.chats.len().min(reference.len())..];
                assert!(x.chats == tail, "late {who}: not a suffix of the room's order");
            }
        }
    });
    eprintln!(
        "{originals} clients connected and renamed in {:.1}s; {connected_ok} more during the \
         run; total {:.1}s",
        connected_at.as_secs_f64(),
        test_start.elapsed().as_secs_f64()
    );
}
