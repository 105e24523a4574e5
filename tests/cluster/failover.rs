//! Failures under a steady flow of chat: three `chatd serve` hosts, a client on each sending
//! numbered lines, while the JetStream stream's leader node is killed and brought back.

use crate::common::nats::{NatsCluster, time_until};
use crate::common::{Client, Server, ServerBuilder, parse_chat};
use crate::serve::{WAIT, join, until};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Host `i` knows every NATS node, its own first: a host whose node dies goes on through another.
fn host_with_every_node(nats: &NatsCluster, i: usize) -> Server {
    let urls: Vec<String> = (0..3).map(|k| nats.url((i + k) % 3)).collect();
    let cluster = format!(
        "[cluster]\nenabled = true\nnats = {urls:?}\nroom = \"main\"\nnode = \"h{i}\"\n\
         host_timeout = \"15s\"\noutage_notice = \"1s\"\noutage_timeout = \"60s\""
    );
    let builder = ServerBuilder::new().workers(2).chat_key("rate_limit = { messages = 0 }");
    builder.raw(&cluster).start()
}

/// What one client saw: each chat line's text with when it came, and the other lines.
struct Seen {
    chat: Vec<(Instant, String)>,
    other: Vec<String>,
}

/// Reads `client` until it has seen the `end` line of each of the `writers`, counting chat lines
/// in `progress`.
fn read_all(mut client: Client, writers: usize, progress: Arc<AtomicUsize>) -> Seen {
    let mut seen = Seen { chat: Vec::new(), other: Vec::new() };
    let mut ended = 0;
    while ended < writers {
        let line = client
            .read_line(WAIT)
            .unwrap_or_else(|e| panic!("{}: {e} after {:?}", client.label(), seen.other));
        match parse_chat(&line) {
            Some(chat) => {
                ended += usize::from(chat.text.ends_with(" end"));
                seen.chat.push((Instant::now(), chat.text));
                progress.fetch_add(1, Ordering::Relaxed);
            }
            None => seen.other.push(line),
        }
    }
    seen
}

#[test]
fn killing_the_stream_leader_while_chatting_loses_doubles_and_reorders_nothing() {
    let mut nats = NatsCluster::start(3);
    let hosts: Vec<Server> = (0..3).map(|i| host_with_every_node(&nats, i)).collect();
    let mut clients = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        clients.push(join(host, &format!("c{i}")).0);
    }
    until(&mut clients[0], "(3 online)");
    time_until(WAIT, "a stream leader", || nats.stream_leader("CHATD_main").is_some());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let mut socket = client.writer();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    socket.write_all(format!("c{i} {n}\n").as_bytes()).expect("write");
                    n += 1;
                    // Pacing the flow (about 50 lines a second per client), not synchronising.
                    thread::sleep(Duration::from_millis(20));
                }
                socket.write_all(format!("c{i} end\n").as_bytes()).expect("write the end");
                n
            })
        })
        .collect();
    let progress: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .zip(&progress)
        .map(|(client, progress)| {
            let progress = progress.clone();
            thread::spawn(move || read_all(client, 3, progress))
        })
        .collect();
    // Every host delivers lines before the kill, after it, and after the node is back.
    let delivered_past = |count: usize, what: &str| {
        time_until(Duration::from_secs(60), what, || {
            progress.iter().all(|p| p.load(Ordering::Relaxed) >= count)
        });
    };
    delivered_past(60, "lines before the kill");
    let leader = nats.stream_leader("CHATD_main").expect("leader");
    let at_kill = progress[0].load(Ordering::Relaxed);
    nats.kill(leader);
    let killed_at = Instant::now();
    delivered_past(at_kill + 300, "lines after the kill");
    let new_leader = nats.stream_leader("CHATD_main");
    nats.restart(leader);
    let at_back = progress[0].load(Ordering::Relaxed);
    delivered_past(at_back + 150, "lines after the node is back");
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<usize> = writers.into_iter().map(|w| w.join().expect("writer")).collect();
    let seen: Vec<Seen> = readers.into_iter().map(|r| r.join().expect("reader")).collect();

    let texts = |s: &Seen| s.chat.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let order = texts(&seen[0]);
    for (i, s) in seen.iter().enumerate().skip(1) {
        assert!(texts(s) == order, "host {i} saw another order than host 0");
    }
    // Each writer's lines once each, in the order written, none missing.
    let mut next: HashMap<&str, usize> = HashMap::new();
    for text in &order {
        let (who, n) = text.split_once(' ').expect("cI N");
        let expected = next.entry(who).or_default();
        if n == "end" {
            *expected = usize::MAX;
            continue;
        }
        assert_eq!(n.parse::<usize>().ok(), Some(*expected), "{who}'s lines in order: {text}");
        *expected += 1;
    }
    for (i, count) in sent.iter().enumerate() {
        let ended = next.get(format!("c{i}").as_str()) == Some(&usize::MAX);
        assert!(ended, "c{i}: not all {count} lines seen");
    }
    assert_eq!(order.len(), sent.iter().sum::<usize>() + 3, "nothing more");
    for (i, s) in seen.iter().enumerate() {
        let times: Vec<Instant> = s.chat.iter().map(|(t, _)| *t).collect();
        let (pause, start) = times
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .unwrap_or((Duration::ZERO, killed_at));
        let at = if start >= killed_at {
            format!("{:?} after", start - killed_at)
        } else {
            format!("{:?} before", killed_at - start)
        };
        eprintln!(
            "host h{i}: longest pause in deliveries {pause:?}, from {at} the kill; other lines: {:?}",
            s.other
        );
    }
    eprintln!(
        "stream leader n{} killed, new leader {new_leader:?}; {} lines in all",
        leader + 1,
        order.len()
    );
}
