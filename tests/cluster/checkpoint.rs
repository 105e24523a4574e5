//! A host that starts after the stream dropped the events that made the room (its `max_msgs`
//! reached) starts from another host's checkpoint, and holds the room the others hold.

use crate::common::nats::{NatsCluster, time_until};
use crate::common::{ServerBuilder, parse_chat};
use crate::serve::{WAIT, host_config, join, until};
use chatd::cluster::bridge::{Bridge, Report, Settings};
use std::future::Future;
use std::time::Duration;

/// The stream's limit, made small so that a few dozen lines push the first events out; a
/// checkpoint then comes every 10 messages.
const MAX_MESSAGES: i64 = 40;

/// Creates the room `main`'s stream keeping `max_messages`, as an operator may; hosts use it
/// as it is.
pub(crate) fn create_small_stream(nats: &NatsCluster, max_messages: i64) {
    let (_poll, waker) = crate::waker();
    let settings = Settings {
        urls: nats.urls(),
        room: "main".into(),
        node: "setup".into(),
        replicas: 3,
        max_messages,
    };
    let bridge = Bridge::start(settings, 1, waker).expect("bridge");
    time_until(WAIT, "the stream", || {
        bridge.next_report(Duration::from_millis(100)) == Some(Report::Stream(true))
    });
}

/// Runs `f` with a JetStream context on the cluster.
fn with_jetstream<T, F: Future<Output = T>>(
    nats: &NatsCluster,
    f: impl FnOnce(async_nats::jetstream::Context) -> F,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url(0)).await.expect("connect");
        f(async_nats::jetstream::new(client)).await
    })
}

/// Makes room `main`'s checkpoint store one that refuses every write (sealed), so hosts start
/// without checkpoints, as when the store cannot be read.
pub(crate) fn refuse_checkpoints(nats: &NatsCluster) {
    with_jetstream(nats, |js| async move {
        let config = async_nats::jetstream::object_store::Config {
            bucket: "CHATD_main".into(),
            num_replicas: 3,
            ..Default::default()
        };
        let mut store = js.create_object_store(config).await.expect("object store");
        store.seal().await.expect("seal");
    });
}

/// The stream's first sequence, and the sequence of host `node`'s stored checkpoint, if any.
fn stream_and_checkpoint(nats: &NatsCluster, node: &str) -> (u64, Option<u64>) {
    with_jetstream(nats, |js| async move {
        let mut stream = js.get_stream("CHATD_main").await.expect("stream");
        let first = stream.info().await.expect("info").state.first_sequence;
        let checkpoint = match js.get_object_store("CHATD_main").await {
            Ok(store) => store
                .info(node)
                .await
                .ok()
                .and_then(|info| info.metadata.get("chatd-seq").and_then(|s| s.parse().ok())),
            Err(_) => None,
        };
        (first, checkpoint)
    })
}

/// Host `i`, showing the last 5 lines at join, without a rate limit.
fn host(nats: &NatsCluster, i: usize) -> ServerBuilder {
    host_config(nats, i)
        .chat_key("history = 5")
        .chat_key("history_on_join = 5")
        .chat_key("rate_limit = { messages = 0 }")
}

#[test]
fn a_host_starting_on_a_trimmed_stream_starts_from_a_checkpoint_and_holds_the_same_room() {
    let nats = NatsCluster::start(3);
    create_small_stream(&nats, MAX_MESSAGES);
    let first = host(&nats, 0).start();
    let (mut ann, guest) = join(&first, "ann");
    ann.send_line("/nick ann");
    until(&mut ann, &format!("* {guest} is now known as ann"));
    let (mut bob, bob_nick) = join(&first, "bob");
    // Each line its own stream message (the next is sent once the last is back): far more
    // messages than the stream keeps.
    for n in 0..60 {
        ann.send_line(&format!("line {n}"));
        until(&mut bob, &format!("line {n}"));
    }
    // The joins and the rename are gone from the stream; a checkpoint taken after them is kept.
    let mut trimmed_to = 0;
    time_until(WAIT, "a checkpoint of h0 the stream can go on from", || {
        let (first_seq, checkpoint) = stream_and_checkpoint(&nats, "h0");
        trimmed_to = first_seq;
        checkpoint.is_some_and(|seq| seq + 1 >= first_seq)
    });
    assert!(trimmed_to > 10, "the stream still starts at {trimmed_to}");

    let second = host(&nats, 1).start();
    let (mut carol, carol_nick) = join(&second, "carol");
    assert!(second.log_contains("starting from the checkpoint at"), "{:?}", second.log_lines());
    // The room's guest numbers went on from ann's and bob's: the same on both hosts.
    assert_eq!(carol_nick, "guest-3", "{:?}", carol.transcript());
    until(&mut ann, &format!("{carol_nick} joined (3 online)"));
    // History: ann's last lines, which the second host could not have known from the stream
    // alone (it never saw ann join).
    let history_line = |n: usize| format!("<ann> line {n}");
    let last = until(&mut carol, "line 59");
    assert!(last.contains(&history_line(59)), "{last:?}");
    let lines: Vec<String> = carol
        .transcript()
        .iter()
        .filter_map(|l| parse_chat(l))
        .map(|chat| format!("<{}> {}", chat.nick, chat.text))
        .collect();
    assert_eq!(lines, (55..60).map(history_line).collect::<Vec<_>>());
    carol.send_line("/who");
    let who = until(&mut carol, "online:");
    for nick in ["ann", bob_nick.as_str(), "guest-3"] {
        assert!(who.contains(nick), "{who:?} lacks {nick}");
    }
    // And the room goes on as one.
    carol.send_line("hello from h1");
    until(&mut ann, "<guest-3> hello from h1");
    bob.send_line("/msg guest-3 psst");
    until(&mut carol, "[pm from");
}

#[test]
fn a_checkpoint_of_a_deleted_stream_is_not_read_into_the_new_one() {
    let nats = NatsCluster::start(3);
    create_small_stream(&nats, MAX_MESSAGES);
    let mut first = host(&nats, 0).start();
    let (mut ann, _) = join(&first, "ann");
    for n in 0..20 {
        ann.send_line(&format!("old {n}"));
        until(&mut ann, &format!("old {n}"));
    }
    time_until(WAIT, "a checkpoint of h0", || stream_and_checkpoint(&nats, "h0").1.is_some());
    drop(ann);
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_exit(Duration::from_secs(20));
    // The operator deletes the stream (as before going back to an earlier release); the
    // checkpoints stay. A host starts the room anew and it goes past the old checkpoint's
    // sequence.
    with_jetstream(&nats, |js| async move { js.delete_stream("CHATD_main").await.map(|_| ()) })
        .expect("delete the stream");
    let other = host(&nats, 2).start();
    let (mut bob, bob_nick) = join(&other, "bob");
    for n in 0..30 {
        bob.send_line(&format!("new {n}"));
        until(&mut bob, &format!("new {n}"));
    }
    let checkpoint = stream_and_checkpoint(&nats, "h0").1.expect("the old checkpoint");
    let late = host(&nats, 1).start();
    let (mut carol, carol_nick) = join(&late, "carol");
    until(&mut carol, "new 29");
    assert!(!late.log_contains("starting from the checkpoint"), "{:?}", late.log_lines());
    // The new room only: bob, carol, bob's lines.
    assert_eq!(
        carol_nick,
        "guest-2",
        "the old checkpoint at {checkpoint}: {:?}",
        carol.transcript()
    );
    carol.send_line("/who");
    let who = until(&mut carol, "online:");
    assert!(who.contains("2 online: ") && who.contains(&bob_nick), "{who:?}");
    assert!(!carol.transcript().iter().any(|l| l.contains("old ")), "{:?}", carol.transcript());
}
