//! The publisher: this host's events into the stream, in order, each stored once.
//!
//! Every stream message costs NATS the same whatever it carries: the publish, its replication
//! to the stream's replicas, its acknowledgement, one delivery to each host. In a busy room
//! that per-message cost, not the bytes, is what NATS spends its CPU on, so when this host has
//! sent a message within the last [`LINGER`], the chat lines that follow wait out the rest of
//! it and go together in one packed message (`events::pack`). An idle room pays nothing: a line
//! after a quiet spell goes at once. Only chat lines are packed (joins, nicks and the rest go
//! alone, and flush the lines before them), and only while every host of the room reads packed
//! messages; the door decides both per event (`Command::Publish::packable`).
//!
//! A message, once formed, never changes: a retry sends the same events under the same
//! `Nats-Msg-Id` (its first event's), so JetStream's de-duplication still stores each event
//! once.

use super::{Out, READS_PACKED, Report, Settings, backoff, events};
use async_nats::jetstream::{self, context::Context};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long after a message the next chat lines may wait to go together. Under load it bounds
/// the messages per host to about 100 a second (plus events that are not chat lines); its cost
/// is at most this much latency on a line, and only when the room is busy. In S2 (benches/) 5 ms
/// left NATS 0.42 cores and p99 33 ms, 10 ms 0.28 and 30 ms, 20 ms 0.17 and 34 ms: past 10 ms
/// the wait costs more than the CPU it saves.
pub const LINGER: Duration = Duration::from_millis(10);
/// Messages awaiting their acknowledgements at once: a message never waits for an earlier
/// one's round trip through the stream's replicas.
const WINDOW: usize = 256;
/// At most this many events, and this many bytes of them, in one message (an event larger than
/// that goes alone; a line is at most 512 KiB in cluster mode, a NATS message 1 MiB).
const PACK_EVENTS: usize = 256;
const PACK_BYTES: usize = 64 * 1024;

/// An event handed to the publisher, waiting for its message.
#[derive(Debug)]
pub struct Waiting {
    pub id: String,
    pub payload: Vec<u8>,
    pub packable: bool,
}

/// One stream message: an event, or several packed.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    /// Its events' ids, oldest first; the first is the message's `Nats-Msg-Id`.
    ids: Vec<String>,
    payload: Vec<u8>,
}

/// What the publisher does next with what waits.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Send(Message),
    /// Chat lines wait to be packed until then.
    Linger(Instant),
    Nothing,
}

/// The next message from the front of `waiting`, or when to look again. `last_sent`: when the
/// previous message went; `stopping`: nothing waits any more.
fn next_message(
    waiting: &mut VecDeque<Waiting>,
    last_sent: Option<Instant>,
    now: Instant,
    stopping: bool,
) -> Next {
    if waiting.is_empty() {
        return Next::Nothing;
    }
    // The packable events at the front that fit in one message.
    let mut count = 0;
    let mut bytes = 0;
    for event in waiting.iter().take_while(|e| e.packable).take(PACK_EVENTS) {
        if count > 0 && bytes + event.payload.len() > PACK_BYTES {
            break;
        }
        count += 1;
        bytes += event.payload.len();
    }
    // Lines wait only if they are all that waits and a message can take more of them.
    let room_for_more = count == waiting.len() && count < PACK_EVENTS;
    if let Some(at) = last_sent {
        if room_for_more && !stopping && now < at + LINGER {
            return Next::Linger(at + LINGER);
        }
    }
    if count <= 1 {
        return match waiting.pop_front() {
            Some(event) => Next::Send(Message { ids: vec![event.id], payload: event.payload }),
            None => Next::Nothing,
        };
    }
    let events: Vec<Waiting> = waiting.drain(..count).collect();
    let payload = events::pack(events.iter().map(|e| e.payload.as_slice()));
    Next::Send(Message { ids: events.into_iter().map(|e| e.id).collect(), payload })
}

/// Publishes what comes from `incoming` in order, with up to [`WINDOW`] messages awaiting their
/// acknowledgements. On any failure every message not yet acknowledged is sent again, unchanged
/// and in order, after a pause (JetStream drops the copies of those already stored, by message
/// id). While the connection is down nothing is sent: the client would only queue copies of
/// the same messages. Ends when `incoming` is closed and everything is stored.
pub async fn publish(
    js: Context,
    settings: Settings,
    mut incoming: UnboundedReceiver<Waiting>,
    mut connected: tokio::sync::watch::Receiver<bool>,
    out: Out,
) {
    let subject = format!("chatd.{}.{}", settings.room, settings.node);
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    // Formed and not yet acknowledged, oldest first; the first `acks.len()` are published.
    let mut messages: VecDeque<Message> = VecDeque::new();
    let mut acks = FuturesOrdered::new();
    let mut last_sent = None;
    let mut failures = 0u32;
    let mut open = true;
    loop {
        let mut failed = None;
        let mut linger = None;
        if *connected.borrow_and_update() {
            while acks.len() < WINDOW {
                if acks.len() == messages.len() {
                    match next_message(&mut waiting, last_sent, Instant::now(), !open) {
                        Next::Send(message) => messages.push_back(message),
                        Next::Linger(until) => {
                            linger = Some(tokio::time::Instant::from_std(until));
                            break;
                        }
                        Next::Nothing => break,
                    }
                }
                let message = &messages[acks.len()];
                let publish = jetstream::message::PublishMessage::build()
                    .payload(message.payload.clone().into())
                    .message_id(&message.ids[0])
                    .header(READS_PACKED, "1");
                match js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => {
                        acks.push_back(ack.into_future());
                        last_sent = Some(Instant::now());
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if failed.is_none() {
            if !open && waiting.is_empty() && messages.is_empty() {
                return;
            }
            tokio::select! {
                () = sleep_until(linger), if linger.is_some() => {}
                event = incoming.recv(), if open => match event {
                    Some(event) => {
                        waiting.push_back(event);
                        // All that came meanwhile, so a message takes what it can.
                        while let Ok(event) = incoming.try_recv() {
                            waiting.push_back(event);
                        }
                    }
                    None => open = false,
                },
                Some(ack) = acks.next() => match ack {
                    Ok(ack) => {
                        failures = 0;
                        let (seq, duplicate) = (ack.sequence, ack.duplicate);
                        for id in messages.pop_front().map(|m| m.ids).unwrap_or_default() {
                            out.send(Report::Stored { id, seq, duplicate });
                        }
                    }
                    Err(e) => failed = Some(e.to_string()),
                },
                // The sender lives as long as the client's callback: this only ends with the
                // thread.
                _ = connected.changed() => {}
            }
        }
        if let Some(e) = failed {
            acks = FuturesOrdered::new();
            failures += 1;
            if failures == 1 {
                out.send(Report::Problem(format!("publishing held until NATS answers: {e}")));
            }
            tokio::time::sleep(backoff(failures)).await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize, packable: bool) -> Waiting {
        Waiting { id: format!("h.1.{n}"), payload: vec![n as u8; 10], packable }
    }

    fn ids(next: &Next) -> Vec<&str> {
        match next {
            Next::Send(message) => message.ids.iter().map(String::as_str).collect(),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn after_a_quiet_spell_a_line_goes_at_once_and_alone() {
        let now = Instant::now();
        let mut waiting = VecDeque::from([event(1, true)]);
        assert_eq!(ids(&next_message(&mut waiting, None, now, false)), ["h.1.1"]);
        let mut waiting = VecDeque::from([event(2, true)]);
        let long_ago = now - LINGER * 2;
        let next = next_message(&mut waiting, Some(long_ago), now, false);
        // Alone, a line is its own message, readable by any release.
        assert_eq!(next, Next::Send(Message { ids: vec!["h.1.2".into()], payload: vec![2; 10] }));
        assert_eq!(next_message(&mut waiting, None, now, false), Next::Nothing);
    }

    #[test]
    fn lines_soon_after_a_message_wait_and_go_together() {
        let sent = Instant::now();
        let now = sent + LINGER / 2;
        let mut waiting = VecDeque::from([event(1, true), event(2, true)]);
        assert_eq!(next_message(&mut waiting, Some(sent), now, false), Next::Linger(sent + LINGER));
        assert_eq!(waiting.len(), 2);
        waiting.push_back(event(3, true));
        let next = next_message(&mut waiting, Some(sent), sent + LINGER, false);
        assert_eq!(ids(&next), ["h.1.1", "h.1.2", "h.1.3"]);
        let Next::Send(message) = next else { unreachable!() };
        let unpacked = events::unpack(&message.payload).expect("unpack");
        assert_eq!(unpacked, [[1u8; 10].as_slice(), &[2; 10], &[3; 10]]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn an_event_that_is_not_a_line_flushes_the_lines_before_it_and_goes_alone() {
        let sent = Instant::now();
        let now = sent + LINGER / 2;
        let mut waiting = VecDeque::from([event(1, true), event(2, true), event(3, false)]);
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, false)), ["h.1.1", "h.1.2"]);
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, false)), ["h.1.3"]);
        let mut waiting = VecDeque::from([event(4, false), event(5, true)]);
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, false)), ["h.1.4"]);
        assert!(matches!(next_message(&mut waiting, Some(sent), now, false), Next::Linger(_)));
    }

    #[test]
    fn a_full_message_goes_at_once_and_a_stopping_publisher_does_not_wait() {
        let sent = Instant::now();
        let now = sent + LINGER / 2;
        let mut waiting: VecDeque<Waiting> = (0..PACK_EVENTS + 1).map(|n| event(n, true)).collect();
        let Next::Send(message) = next_message(&mut waiting, Some(sent), now, false) else {
            panic!("a full message waited");
        };
        assert_eq!(message.ids.len(), PACK_EVENTS);
        assert!(matches!(next_message(&mut waiting, Some(sent), now, false), Next::Linger(_)));
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, true)).len(), 1);
        // Bytes too: big lines go in messages of at most PACK_BYTES, or alone.
        let big = |n: usize, len: usize| Waiting { payload: vec![0; len], ..event(n, true) };
        let mut waiting =
            VecDeque::from([big(1, PACK_BYTES / 2), big(2, PACK_BYTES / 2), big(3, 1)]);
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, false)), ["h.1.1", "h.1.2"]);
        let mut waiting = VecDeque::from([big(4, PACK_BYTES * 2), big(5, 1)]);
        assert_eq!(ids(&next_message(&mut waiting, Some(sent), now, false)), ["h.1.4"]);
    }
}
