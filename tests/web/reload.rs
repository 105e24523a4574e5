//! Web sessions across reloads: their sockets move to the next worker generation with their
//! framing state (and their TLS state, for wss), so no web client notices a reload.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket};

use crate::common::*;
use crate::control::*;
use crate::fleet::{Fleet, StopOnDrop};
use crate::{room_server, start_web, web_addr};

/// 500 web clients and 20 TCP clients on four workers, 10 of each kind chatting, and three
/// reloads: every client ends with the same sequence of chat lines, each exactly once, and
/// nobody is disconnected.
#[test]
fn five_hundred_web_sessions_through_three_reloads() {
    through_reloads(500, false);
}

/// The same with 100 wss clients (WebSocket inside TLS, Python `ssl` behind the TLS bridge):
/// their TLS sessions move too, none handshakes twice.
#[test]
fn wss_sessions_through_three_reloads() {
    through_reloads(100, true);
}

fn through_reloads(web: usize, tls: bool) {
    const PLAIN: usize = 20;
    const SENDERS_PER_KIND: usize = 10;
    const SEND_EVERY: Duration = Duration::from_millis(50);
    const MAX_IN_FLIGHT: usize = 20 * SENDERS_PER_KIND;
    const RELOADS: u64 = 3;
    const WAIT: Duration = Duration::from_secs(180);

    let dir = tempfile::tempdir().expect("temp dir");
    let pki = tls.then(|| Pki::new(dir.path()));
    let pair = pki.as_ref().map(|p| p.issue("server", 1));
    let server = start_web(room_server(4), pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())));
    let control = server.control_socket();
    let mut st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let bridge = pki.as_ref().map(|p| TlsBridge::start(&p.ca, web_addr(&server)));
    let ws_addr = bridge.as_ref().map_or(web_addr(&server), |b| b.addr);

    // Clients 0..web are web clients, the rest TCP; everyone renames itself u<i>.
    let fleet = Fleet::new();
    let total = web + PLAIN;
    for i in 0..total {
        if i < web {
            fleet
                .connect_web(ws_addr, Some(format!("u{i}")))
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
        } else {
            let stream = TcpStream::connect_timeout(&server.addr(), CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
            fleet.add(stream, Some(format!("u{i}")), None, Vec::new());
        }
    }
    fleet.wait(WAIT, "every welcome", |t| t.iter().all(|x| x.nick.is_some()));
    for i in 0..total {
        fleet.send(i, &format!("/nick u{i}")).expect("send /nick");
    }
    fleet.wait(WAIT, "every client's own rename", |t| t.iter().all(|x| x.renamed));

    let senders: Vec<usize> = (0..SENDERS_PER_KIND).chain(web..web + SENDERS_PER_KIND).collect();
    let reference = web; // a TCP client: the room's order as read over TCP
    let stop = AtomicBool::new(false);
    let sent = thread::scope(|scope| {
        let _stop = StopOnDrop(&[&stop]);
        let sending = scope.spawn(|| {
            let mut plain: Vec<TcpStream> =
                senders.iter().filter(|&&s| s >= web).map(|&s| fleet.writer(s)).collect();
            let mut counts = vec![0u32; senders.len()];
            let mut total_sent = 0usize;
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                while total_sent > MAX_IN_FLIGHT + fleet.with(|t| t[reference].chats.len())
                    && !stop.load(Ordering::SeqCst)
                {
                    thread::sleep(Duration::from_millis(5));
                    next = Instant::now();
                }
                for (k, &s) in senders.iter().enumerate() {
                    let line = format!("m {s} {}", counts[k]);
                    if s < web {
                        fleet.send(s, &line).unwrap_or_else(|e| panic!("sender u{s}: {e}"));
                    } else {
                        plain[k - SENDERS_PER_KIND]
                            .write_all(format!("{line}\n").as_bytes())
                            .unwrap_or_else(|e| panic!("sender u{s}: {e}"));
                    }
                    counts[k] += 1;
                    total_sent += 1;
                }
                // Pacing, not synchronisation.
                next += SEND_EVERY;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            counts
        });
        let flowing = |at_least: usize| {
            fleet.wait(WAIT, &format!("{at_least} load lines at the reference client"), |t| {
                t[reference].chats.len() >= at_least
            })
        };
        flowing(2 * senders.len());
        for r in 1..=RELOADS {
            let before = st.clone();
            let t0 = Instant::now();
            expect_reload_ok(&reload_at(&control), 1 + r, 4);
            st = wait_settled(&control, server.pid(), 4, 1 + r, &before.pids());
            eprintln!("reload {r}: {:.3}s", t0.elapsed().as_secs_f64());
            let now = fleet.with(|t| t[reference].chats.len());
            flowing(now + 2 * senders.len());
        }
        stop.store(true, Ordering::SeqCst);
        sending.join().expect("senders")
    });

    // The final marker goes once the room has numbered every load line, so whoever reads it
    // has read them all.
    let total_sent: usize = sent.iter().map(|&n| n as usize).sum();
    fleet.wait(WAIT, "every load line", |t| t[reference].chats.len() >= total_sent);
    let last = total - 1;
    fleet.send(last, &format!("final {last}")).expect("send final");
    fleet.wait(WAIT, "the final marker at every client", |t| t.iter().all(|x| x.finals >= 1));

    if let Some(bridge) = &bridge {
        let events = bridge.events();
        assert!(
            !events.iter().any(|e| e.contains("failed") || e.starts_with("closed")),
            "{events:?}"
        );
        assert_eq!(bridge.handshakes(), web, "one handshake per wss client, none again");
    }
    fleet.with(|t| {
        let reference = &t[reference].chats;
        let mut next = vec![0u32; senders.len()];
        for &m in reference {
            let (s, n) = ((m >> 20) as usize, m & 0xFFFFF);
            let k = senders.iter().position(|&x| x == s).expect("a sender");
            assert_eq!(n, next[k], "sender u{s}: lost, repeated or reordered");
            next[k] += 1;
        }
        assert_eq!(next, sent, "load lines received per sender vs sent");
        for (i, x) in t.iter().enumerate() {
            let who = format!("client #{i} ({})", if i < web { "web" } else { "tcp" });
            assert!(x.closed.is_none(), "{who} disconnected: {:?}", x.closed);
            assert_eq!(x.unexpected_count, 0, "{who}: unexpected lines {:?}", x.unexpected);
            assert_eq!(x.finals, 1, "{who}: final marker count");
            assert!(x.chats == *reference, "{who}: not the room's order");
        }
    });
}

/// A request under way when a reload starts is finished by the old worker, whose hand-off
/// waits for it; then the session moves like any other.
#[test]
fn a_request_under_way_finishes_across_a_reload() {
    let server = start_web(room_server(1), None);
    let control = server.control_socket();
    let before = wait_settled(&control, server.pid(), 1, 1, &[]);
    let (mut watcher, _, _) = server.join("watcher");
    let addr = web_addr(&server);
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
    stream.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n").expect("half a request");
    let port = stream.local_addr().expect("local addr").port();
    let pids = before.pids();
    wait_until(LINE_TIMEOUT, "the worker to accept the connection", || {
        worker_of(port, addr.port(), &pids)
    });
    let reload = thread::spawn(move || reload_at(&control));
    server.wait_for_log("handing sessions over to the next generation", LINE_TIMEOUT);
    let rest = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(rest.as_bytes()).expect("the rest of the request");
    let (head, first) = read_head(&mut stream).expect("an answer");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // The request was written by hand (half before the reload); the WebSocket is tungstenite's
    // from the answer on.
    let mut ws = WebSocket::from_partially_read(stream, first, Role::Client, None);
    expect_reload_ok(&reload.join().expect("reload"), 2, 1);
    wait_settled(&server.control_socket(), server.pid(), 1, 2, &before.pids());
    ws.send(Message::text("hello after the reload")).expect("send");
    // The welcome (maybe already read with the answer), then the line.
    let nick = watcher.next_line();
    let nick = nick.strip_prefix("* ").and_then(|l| l.split(' ').next()).expect("a join");
    watcher.expect_chat(nick, "hello after the reload");
    assert!(!server.log_contains("refused"), "no failed opening");
}
