//! The door the hub calls: hosts on a real cluster agreeing on the room.

use crate::common::nats::NatsCluster;
use chatd::bus::message::{LeaveReason, SessionId};
use chatd::cluster::bridge::{Bridge, Command};
use chatd::cluster::events::{Envelope, Event, Private};
use chatd::cluster::outage::Step;
use chatd::cluster::room::Change;
use chatd::cluster::{Cluster, Output};
use chatd::config;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A host: the door, the mio loop its bridge wakes, and what it gave out so far.
struct Host {
    cluster: Cluster,
    poll: mio::Poll,
    seen: Vec<Output>,
}

impl Host {
    fn start(nats: &NatsCluster, room: &str, node: &str) -> Host {
        Host::with(|waker| Cluster::start(&settings(nats, room, node), 100, waker))
    }

    fn with(start: impl FnOnce(Arc<mio::Waker>) -> std::io::Result<Cluster>) -> Host {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        Host { cluster: start(waker).expect("start"), poll, seen: Vec::new() }
    }

    /// Runs the host's loop (woken by the bridge, ticking every 100 ms) until `f` holds.
    fn until(&mut self, what: &str, mut f: impl FnMut(&Host) -> bool) {
        let start = Instant::now();
        let mut events = mio::Events::with_capacity(8);
        loop {
            let outputs = self.cluster.poll(Instant::now());
            self.seen.extend(outputs);
            if f(self) {
                return;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {:#?}", self.seen);
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(100)));
        }
    }

    fn changes(&self) -> Vec<(u64, Change)> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Output::Applied(a) => Some((a.seq, a.change.clone())),
                _ => None,
            })
            .collect()
    }

    /// The chat lines applied so far, with their stream sequences.
    fn said(&self) -> Vec<(u64, String)> {
        self.changes()
            .into_iter()
            .filter_map(|(seq, c)| match c {
                Change::Said { text, .. } => Some((seq, text)),
                _ => None,
            })
            .collect()
    }

    fn nick_of(&self, node: &str, session: u64) -> Option<String> {
        let room = self.cluster.room();
        let id = room.member_of(node, SessionId(session))?;
        room.member(id).map(|m| m.nick.clone())
    }
}

fn settings(nats: &NatsCluster, room: &str, node: &str) -> config::Cluster {
    config::Cluster {
        enabled: true,
        nats: nats.urls(),
        room: room.into(),
        node: node.into(),
        replicas: 3,
        host_timeout: Duration::from_secs(3),
        outage_notice: Duration::from_secs(1),
        outage_timeout: Duration::from_secs(20),
    }
}

fn join(session: u64) -> Event {
    Event::Join { session: SessionId(session), addr: "192.0.2.7:5000".parse().unwrap() }
}

#[test]
fn two_hosts_share_one_room_and_a_vanished_host_leaves_it_once() {
    let nats = NatsCluster::start(3);
    let mut a = Host::start(&nats, "door", "a");
    let mut b = Host::start(&nats, "door", "b");
    a.until("the room reachable", |h| h.cluster.connected());
    b.until("the room reachable", |h| h.cluster.connected());
    a.cluster.publish(join(1));
    a.until("a's member", |h| h.nick_of("a", 1).is_some());
    b.cluster.publish(join(1));
    b.until("both members", |h| h.cluster.room().online() == 2);
    a.until("both members", |h| h.cluster.room().online() == 2);
    assert_eq!(a.nick_of("a", 1).as_deref(), Some("guest-1"));
    assert_eq!(b.nick_of("b", 1).as_deref(), Some("guest-2"));
    // Both claim one nick at once: the stream's order decides, alike on both hosts.
    a.cluster.publish(Event::Nick { session: SessionId(1), nick: "bob".into() });
    b.cluster.publish(Event::Nick { session: SessionId(1), nick: "Bob".into() });
    let settled = |h: &Host| {
        h.changes().iter().any(|(_, c)| matches!(c, Change::NickRefused { .. }))
            && h.changes().iter().any(|(_, c)| matches!(c, Change::Renamed { .. }))
    };
    a.until("the claims settled", settled);
    b.until("the claims settled", settled);
    assert_eq!(a.cluster.room(), b.cluster.room(), "one room");
    assert_eq!(a.changes(), b.changes(), "the same changes in the same order");
    // A private message reaches the other host.
    let private = Private { from: "bob".into(), to: SessionId(1), text: "psst".into() };
    a.cluster.send_private("b", &private);
    b.until("the private message", |h| h.seen.contains(&Output::Private(private.clone())));
    // a vanishes without a word (dropped without stop): after host_timeout b says its member
    // left, once.
    b.cluster.publish(Event::Say { session: SessionId(1), text: "still here".into() });
    drop(a);
    let lost = |h: &Host| {
        h.changes()
            .iter()
            .filter(|(_, c)| {
                matches!(c, Change::Left { member, reason: LeaveReason::Lost, .. } if member.node == "a")
            })
            .count()
    };
    b.until("a's member lost", |h| lost(h) == 1);
    b.until("a gone", |h| {
        h.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::HostGone { node, clean: false, .. } if node == "a"))
    });
    assert_eq!(b.cluster.room().online(), 1);
    // Some beats later it is still once.
    let beats = b.cluster.room().last_seq() + 3;
    b.until("more beats", |h| h.cluster.room().last_seq() >= beats);
    assert_eq!(lost(&b), 1);
    assert!(!b.seen.iter().any(|o| matches!(o, Output::Outage(Step::Notice))));
}

#[test]
fn a_host_cut_off_tells_its_clients_and_catches_up() {
    let mut nats = NatsCluster::start(3);
    let mut a = Host::start(&nats, "cutoff", "a");
    a.until("the room reachable", |h| h.cluster.connected());
    a.cluster.publish(join(1));
    a.until("a's member", |h| h.nick_of("a", 1).is_some());
    for i in 0..3 {
        nats.kill(i);
    }
    a.until("the notice", |h| h.seen.contains(&Output::Outage(Step::Notice)));
    assert!(!a.cluster.connected());
    a.cluster.publish(Event::Say { session: SessionId(1), text: "held".into() });
    assert!(a.cluster.held() > 0);
    nats.restart_all();
    a.until("the room back", |h| h.seen.contains(&Output::Outage(Step::Back)));
    a.until("the held line", |h| {
        h.changes().iter().any(|(_, c)| matches!(c, Change::Said { text, .. } if text == "held"))
    });
    let said = a.changes().iter().filter(|(_, c)| matches!(c, Change::Said { .. })).count();
    assert_eq!(said, 1);
    let a_stop = a.cluster;
    a_stop.stop();
}

#[test]
fn a_host_stalled_past_host_timeout_finds_itself_declared_gone_and_goes_on() {
    let nats = NatsCluster::start(3);
    let mut a = Host::start(&nats, "stall", "a");
    let mut b = Host::start(&nats, "stall", "b");
    a.until("the room reachable", |h| h.cluster.connected());
    b.until("the room reachable", |h| h.cluster.connected());
    a.cluster.publish(join(1));
    b.until("a's member", |h| h.nick_of("a", 1).is_some());
    let first = a.cluster.generation();
    // a stalls: it runs nothing, so it beats no more (as a stopped or swapped-out process).
    b.until("a gone", |h| h.cluster.room().hosts().all(|(node, _)| node != "a"));
    a.until("its own declaration", |h| {
        h.changes().iter().any(|(_, c)| matches!(c, Change::HostGone { node, .. } if node == "a"))
    });
    assert!(
        a.changes()
            .iter()
            .any(|(_, c)| matches!(c, Change::Left { member, .. } if member.node == "a"))
    );
    assert_ne!(a.cluster.generation(), first, "a new generation");
    // What it publishes now counts again, alike for both.
    a.cluster.publish(join(2));
    a.until("its new member", |h| h.nick_of("a", 2).is_some());
    b.until("a's new member", |h| h.nick_of("a", 2).is_some());
    assert_eq!(a.cluster.room(), b.cluster.room());
}

#[test]
fn a_retry_stored_after_the_next_event_of_its_host_is_applied_in_the_host_order() {
    let nats = NatsCluster::start(3);
    let mut b = Host::start(&nats, "reorder", "b");
    b.until("the room reachable", |h| h.cluster.connected());
    // Host x's events as a stream leader change leaves them: "one" (2) lost with the old
    // leader while "two" (3) reached the new one, then the retry of "one".
    let (_poll, x) = raw_bridge(&nats, "reorder", "x");
    let say = |text: &str| Event::Say { session: SessionId(1), text: text.into() };
    for (n, event) in [(1, join(1)), (3, say("two")), (2, say("one")), (4, say("three"))] {
        let envelope = Envelope { node: "x".into(), generation: 1, n, event };
        let payload = chatd::cluster::events::encode(&envelope);
        let id = format!("x.1.{n}");
        x.send(Command::Publish { id, payload, packable: false });
    }
    b.until("x's lines", |h| h.said().len() == 3);
    let lines = b.said();
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"], "{lines:?}");
    assert!(lines[0].0 > lines[1].0, "\"one\" is stored after \"two\": {lines:?}");
}

/// Publishes `envelope` into the room's stream as a release from before packed messages did:
/// without the header that says its host reads them.
fn publish_as_earlier_release(nats: &NatsCluster, room: &str, envelope: &Envelope) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url(0)).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let subject = format!("chatd.{room}.{}", envelope.node);
        let payload = chatd::cluster::events::encode(envelope);
        js.publish(subject, payload.into()).await.expect("publish").await.expect("stored");
    });
}

#[test]
fn chat_lines_are_packed_only_while_every_host_reads_packed_messages() {
    let nats = NatsCluster::start(3);
    let mut a = Host::start(&nats, "packing", "a");
    let mut b = Host::start(&nats, "packing", "b");
    let hosts = |h: &Host| h.cluster.room().hosts().map(|(n, _)| n.to_owned()).collect::<Vec<_>>();
    // Each host's first beat, which says it reads packed messages.
    b.until("b's beat", |h| hosts(h).contains(&"b".to_owned()));
    a.until("b in the room", |h| hosts(h).contains(&"b".to_owned()));
    a.cluster.publish(join(1));
    b.until("a's member", |h| h.nick_of("a", 1).is_some());
    let burst = |a: &mut Host, from: usize| {
        for n in from..from + 100 {
            a.cluster.publish(Event::Say { session: SessionId(1), text: format!("line {n}") });
        }
    };
    let messages = |lines: &[(u64, String)]| {
        let mut seqs: Vec<u64> = lines.iter().map(|(seq, _)| *seq).collect();
        seqs.dedup();
        seqs.len()
    };
    // Every host reads packed messages: a burst of lines takes fewer messages.
    burst(&mut a, 0);
    b.until("the first 100 lines", |h| h.said().len() == 100);
    let first = b.said();
    let texts: Vec<String> = (0..100).map(|n| format!("line {n}")).collect();
    assert_eq!(first.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), texts, "in order, once");
    assert!(messages(&first) < 100, "packed: {} messages", messages(&first));
    // A host of an earlier release joins the room: every line goes alone again.
    let beat = Event::Beat { clients: 0 };
    let old = Envelope { node: "old".into(), generation: 1, n: 1, event: beat };
    publish_as_earlier_release(&nats, "packing", &old);
    a.until("the earlier release in the room", |h| hosts(h).contains(&"old".to_owned()));
    burst(&mut a, 100);
    b.until("the next 100 lines", |h| h.said().len() == 200);
    let second = b.said().split_off(100);
    assert_eq!(messages(&second), 100, "one message per line while a host cannot read packs");
}

/// A raw bridge for node `node`, publishing as a host of this release would.
#[test]
fn a_restarted_host_never_publishes_its_earlier_lifes_members_as_its_own() {
    let nats = NatsCluster::start(3);
    let mut x = Host::start(&nats, "ghost", "x");
    x.until("the room reachable", |h| h.cluster.connected());
    x.cluster.publish(join(1));
    x.until("x's member", |h| h.nick_of("x", 1).is_some());
    // Another host appears after x's member joined.
    let mut y = Host::start(&nats, "ghost", "y");
    y.until("y in the room", |h| h.cluster.room().hosts().any(|(node, _)| node == "y"));
    // x vanishes (no leave, no HostDown) and starts again: reading the stream back, it meets
    // y's generation while its earlier life's member is still in the room under its name.
    drop(x);
    let mut again = Host::start(&nats, "ghost", "x");
    again.until("its new generation in the room", |h| {
        h.cluster.room().numbering("x", h.cluster.generation()).is_some()
    });
    again.cluster.publish(Event::Notice { text: "marker".into() });
    let marker =
        |h: &Host| h.changes().iter().any(|(_, c)| *c == Change::Notice { text: "marker".into() });
    again.until("the marker", marker);
    y.until("the marker", marker);
    // Everything x published is applied: the earlier life's member left with it, for good.
    for host in [&again, &y] {
        assert_eq!(host.nick_of("x", 1), None, "{:#?}", host.changes());
        assert_eq!(host.cluster.room().online(), 0);
    }
    assert!(
        !again.changes().iter().any(|(_, c)| matches!(c, Change::Learnt { .. })),
        "{:#?}",
        again.changes()
    );
}

fn raw_bridge(nats: &NatsCluster, room: &str, node: &str) -> (mio::Poll, Bridge) {
    let (poll, waker) = crate::waker();
    let settings = chatd::cluster::bridge::Settings {
        urls: nats.urls(),
        room: room.into(),
        node: node.into(),
        replicas: 3,
        max_messages: 1_000_000,
    };
    (poll, Bridge::start(settings, 1, waker).expect("bridge"))
}

#[test]
fn a_gap_left_by_a_crash_is_filled_from_the_stored_events_and_the_generation_goes_on() {
    let nats = NatsCluster::start(3);
    let mut b = Host::start(&nats, "gap", "b");
    let mut x = Host::start(&nats, "gap", "x");
    x.until("the room reachable", |h| h.cluster.connected());
    x.cluster.publish(join(1));
    x.until("x's member", |h| h.nick_of("x", 1).is_some());
    b.until("x's member", |h| h.nick_of("x", 1).is_some());
    // x's supervisor crashes after handing NATS two lines: the first is lost (a leader change),
    // the second stored. The stored room kept both.
    let (generation, k, saved) = (x.cluster.generation(), x.cluster.numbered(), x.cluster.save());
    drop(x);
    let say = |text: &str| Event::Say { session: SessionId(1), text: text.into() };
    let (_poll, raw) = raw_bridge(&nats, "gap", "x");
    let two = Envelope { node: "x".into(), generation, n: k + 2, event: say("two") };
    let payload = chatd::cluster::events::encode(&two);
    raw.send(Command::Publish {
        id: format!("x.{generation}.{}", k + 2),
        payload,
        packable: false,
    });
    let missing = |h: &Host| h.cluster.room().numbering("x", generation).map(|n| n.missing);
    b.until("x's second line waiting", |h| missing(h) == Some(vec![k + 1]));
    // The next supervisor fills the gap from the stored room and goes on as the same member.
    let unstored = vec![(k + 1, say("one")), (k + 2, say("two"))];
    let mut x = Host::with(|waker| {
        Cluster::resume_after_crash(&settings(&nats, "gap", "x"), 100, waker, saved, unstored)
    });
    x.until("the stream read to its end", |h| h.seen.contains(&Output::Resumed));
    assert_eq!(x.cluster.generation(), generation, "went on as a new generation");
    b.until("both lines", |h| h.said().len() == 2);
    let texts: Vec<String> = b.said().into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, ["one", "two"]);
    x.cluster.publish(say("three"));
    b.until("a line after", |h| h.said().len() == 3);
    let gone = b.changes().into_iter().any(|(_, c)| matches!(c, Change::HostGone { .. }));
    assert!(!gone, "x's generation ended: {:#?}", b.changes());
    assert_eq!(b.nick_of("x", 1).as_deref(), Some("guest-1"), "x's member stayed");
}
