//! The bridge to NATS against real servers.

use crate::common::nats::{NatsCluster, time_until};
use crate::waker;
use chatd::cluster::bridge::{Bridge, Command, Report, Settings};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn settings(urls: Vec<String>, room: &str, node: &str) -> Settings {
    Settings { urls, room: room.into(), node: node.into(), replicas: 3, max_messages: 1_000_000 }
}

/// A bridge and everything it reported so far.
struct Host {
    bridge: Bridge,
    _poll: mio::Poll,
    /// Events, each with the stream sequence of the message that carried it.
    events: Vec<(u64, Vec<u8>)>,
    /// Messages read, and whether their publishers said they read packed ones.
    messages: Vec<(u64, bool)>,
    stored: Vec<(String, u64, bool, Instant)>,
    states: Vec<Report>,
}

impl Host {
    fn start(settings: Settings) -> Host {
        Host::start_at(settings, 1)
    }

    /// A bridge reading the stream from `from_seq` on.
    fn start_at(settings: Settings, from_seq: u64) -> Host {
        let (poll, waker) = waker();
        let bridge = Bridge::start(settings, from_seq, waker).expect("bridge");
        Host {
            bridge,
            _poll: poll,
            events: Vec::new(),
            messages: Vec::new(),
            stored: Vec::new(),
            states: Vec::new(),
        }
    }

    fn publish(&self, id: &str, payload: &[u8]) {
        self.send(id, payload, false);
    }

    fn send(&self, id: &str, payload: &[u8], packable: bool) {
        self.bridge.send(Command::Publish { id: id.into(), payload: payload.to_vec(), packable });
    }

    /// Takes in one report if one comes within a short while.
    fn pump(&mut self) {
        match self.bridge.next_report(Duration::from_millis(20)) {
            Some(Report::Event { seq, payloads, reads_packed, .. }) => {
                self.messages.push((seq, reads_packed));
                self.events.extend(payloads.into_iter().map(|p| (seq, p)));
            }
            Some(Report::Stored { id, seq, duplicate }) => {
                self.stored.push((id, seq, duplicate, Instant::now()))
            }
            Some(Report::Problem(_) | Report::Private(_) | Report::CaughtUp) | None => {}
            Some(state) => self.states.push(state),
        }
    }

    /// Pumps until `f` holds, at most [`WAIT`]; returns how long it took.
    fn until(&mut self, what: &str, mut f: impl FnMut(&Host) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; states {:?}",
                self.states
            );
            self.pump();
        }
        start.elapsed()
    }

    fn readable(&mut self) {
        self.until("the stream to be readable", |h| h.states.last() == Some(&Report::Stream(true)));
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.events.iter().map(|(_, p)| p.clone()).collect()
    }
}

/// Asserts every payload comes once and each publisher's in the order it published.
fn assert_once_in_order(events: &[Vec<u8>], publishers: &[&str], count: usize) {
    let mut next: HashMap<String, usize> = HashMap::new();
    for payload in events {
        let text = String::from_utf8_lossy(payload);
        let (who, n) = text.split_once('-').expect("WHO-N");
        let n: usize = n.parse().expect("N");
        let expected = next.entry(who.to_owned()).or_default();
        assert_eq!(n, *expected, "{who}'s events once each, in order: {text}");
        *expected += 1;
    }
    for who in publishers {
        assert_eq!(next.get(*who).copied().unwrap_or(0), count, "all of {who}'s events");
    }
}

#[test]
fn three_hosts_on_three_nodes_see_one_order() {
    let nats = NatsCluster::start(3);
    let mut hosts: Vec<Host> = (0..3)
        .map(|i| Host::start(settings(vec![nats.url(i)], "order", &format!("h{i}"))))
        .collect();
    for host in &mut hosts {
        host.readable();
    }
    const EACH: usize = 200;
    for n in 0..EACH {
        for (i, host) in hosts.iter().enumerate() {
            host.publish(&format!("h{i}.{n}"), format!("h{i}-{n}").as_bytes());
        }
    }
    for host in &mut hosts {
        host.until("every event", |h| h.events.len() >= 3 * EACH);
    }
    let order = hosts[0].payloads();
    assert_once_in_order(&order, &["h0", "h1", "h2"], EACH);
    for host in &hosts[1..] {
        assert_eq!(host.payloads(), order, "one order everywhere");
        assert_eq!(
            host.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=600).collect::<Vec<u64>>()
        );
    }
    assert_eq!(hosts[0].events.len(), 3 * EACH, "nothing more");
}

#[test]
fn packable_events_sent_in_a_burst_share_messages_and_come_back_once_in_order() {
    let nats = NatsCluster::start(3);
    let mut hosts: Vec<Host> = (0..3)
        .map(|i| Host::start(settings(vec![nats.url(i)], "packed", &format!("h{i}"))))
        .collect();
    for host in &mut hosts {
        host.readable();
    }
    // Packable and not, interleaved: the ones that are not go alone and in their place.
    const EACH: usize = 300;
    for n in 0..EACH {
        for (i, host) in hosts.iter().enumerate() {
            host.send(&format!("h{i}.{n}"), format!("h{i}-{n}").as_bytes(), n % 50 != 7);
        }
    }
    for host in &mut hosts {
        host.until("every event", |h| h.events.len() >= 3 * EACH);
    }
    let order = hosts[0].events.clone();
    let payloads = hosts[0].payloads();
    assert_once_in_order(&payloads, &["h0", "h1", "h2"], EACH);
    for host in &hosts[1..] {
        assert_eq!(host.events, order, "one order everywhere, and the same messages");
    }
    let messages = hosts[0].messages.clone();
    assert!(messages.len() < 3 * EACH, "{} messages for {} events", messages.len(), 3 * EACH);
    assert!(messages.iter().all(|(_, reads_packed)| *reads_packed));
    // Every publisher had each of its events stored, under the sequence that carried it.
    for (i, host) in hosts.iter_mut().enumerate() {
        host.until("every acknowledgement", |h| h.stored.len() >= EACH);
        for (id, seq, duplicate, _) in &host.stored {
            let n: usize = id.rsplit('.').next().and_then(|n| n.parse().ok()).expect("id");
            let event = (*seq, format!("h{i}-{n}").into_bytes());
            assert!(order.contains(&event) && !duplicate, "{id} stored as {seq}");
        }
    }
    println!("{} events in {} messages", 3 * EACH, messages.len());
}

#[test]
fn a_message_id_sent_twice_is_stored_once_and_a_reader_starts_where_told() {
    let nats = NatsCluster::start(3);
    let mut host = Host::start(settings(nats.urls(), "dedup", "h0"));
    host.readable();
    host.publish("h0.1", b"a-0");
    host.publish("h0.1", b"a-0");
    host.publish("h0.2", b"a-1");
    host.until("three acknowledgements", |h| h.stored.len() == 3);
    let stored: Vec<(u64, bool)> = host.stored.iter().map(|(_, s, d, _)| (*s, *d)).collect();
    assert_eq!(stored, [(1, false), (1, true), (2, false)]);
    host.until("the events", |h| h.events.len() >= 2);
    // A later event shows nothing else arrived in between.
    host.publish("h0.3", b"a-2");
    host.until("the last event", |h| h.events.len() >= 3);
    assert_once_in_order(&host.payloads(), &["a"], 3);
    // A host that has applied the stream up to 1 resumes from 2.
    let mut late = Host::start_at(settings(nats.urls(), "dedup", "h1"), 2);
    late.until("the events from 2 on", |h| h.events.len() >= 2);
    assert_eq!(late.events, [(2, b"a-1".to_vec()), (3, b"a-2".to_vec())]);
}

#[test]
fn events_are_held_while_nats_is_down_and_stored_once_after() {
    let mut nats = NatsCluster::start(3);
    let mut host = Host::start(settings(nats.urls(), "outage", "h0"));
    host.readable();
    for n in 0..10 {
        host.publish(&format!("h0.{n}"), format!("a-{n}").as_bytes());
    }
    host.until("the first events", |h| h.events.len() == 10);
    for i in 0..3 {
        nats.kill(i);
    }
    host.until("the disconnection", |h| h.states.contains(&Report::Connected(false)));
    host.states.clear();
    let down = Instant::now();
    for n in 10..60 {
        host.publish(&format!("h0.{n}"), format!("a-{n}").as_bytes());
    }
    nats.restart_all();
    let took = host.until("reconnection", |h| {
        h.states.contains(&Report::Connected(true)) && h.events.len() == 60
    });
    eprintln!(
        "nats down for {:?}; the held events were all read back {took:?} after it was up again",
        down.elapsed() - took
    );
    host.publish("h0.60", b"a-60");
    host.until("one more event", |h| h.events.len() >= 61);
    assert_once_in_order(&host.payloads(), &["a"], 61);
    let duplicates = host.stored.iter().filter(|(.., d, _)| *d).count();
    eprintln!("{duplicates} retries were dropped as duplicates by JetStream");
}

#[test]
fn killing_the_stream_leader_loses_and_doubles_nothing() {
    let mut nats = NatsCluster::start(3);
    let mut writer = Host::start(settings(nats.urls(), "leader", "w"));
    writer.readable();
    // The stream exists now; find its leader and read from another node.
    time_until(WAIT, "a stream leader", || nats.stream_leader("CHATD_leader").is_some());
    let leader = nats.stream_leader("CHATD_leader").expect("leader");
    let other = (leader + 1) % 3;
    let mut reader =
        Host::start(settings(vec![nats.url(other), nats.url((leader + 2) % 3)], "leader", "r"));
    reader.readable();
    const TOTAL: usize = 400;
    let mut killed_at = None;
    for n in 0..TOTAL {
        writer.publish(&format!("w.{n}"), format!("w-{n}").as_bytes());
        // Paced, so the kill falls in the middle of a steady flow.
        writer.pump();
        if n == TOTAL / 2 {
            nats.kill(leader);
            killed_at = Some(Instant::now());
        }
    }
    // An event stored whose acknowledgement was lost with the leader is acknowledged again as
    // a duplicate when retried: count ids.
    writer.until("every acknowledgement", |h| {
        h.stored.iter().map(|s| &s.0).collect::<std::collections::HashSet<_>>().len() == TOTAL
    });
    reader.until("every event", |h| h.events.len() >= TOTAL);
    assert_once_in_order(&reader.payloads(), &["w"], TOTAL);
    let killed_at = killed_at.expect("killed");
    // The pause: the longest gap between two acknowledgements after the kill.
    let times: Vec<Instant> =
        writer.stored.iter().map(|s| s.3).filter(|t| *t >= killed_at).collect();
    let pause = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let new_leader = nats.stream_leader("CHATD_leader");
    eprintln!(
        "stream leader n{} killed; longest pause in acknowledgements {pause:?}; new leader {new_leader:?}",
        leader + 1
    );
    drop(writer);
    nats.restart(leader);
}
