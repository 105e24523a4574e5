//! The one thread that talks to NATS.
//!
//! The NATS client (`async-nats`) is asynchronous; chatd's processes are single-threaded mio
//! loops. So the client runs on a thread of its own with a current-thread tokio runtime, and
//! the two sides meet only at channels: commands go in over a tokio channel (sending never
//! blocks the caller), reports come out over a crossbeam channel, and every report wakes the
//! caller's mio loop with its [`mio::Waker`]. The bridge knows nothing of the room: it moves
//! bytes between the caller and NATS, in order, and says how the connection is doing.
//!
//! What it does (docs/cluster.md):
//! * creates the stream `CHATD_<room>` if it is missing (subjects `chatd.<room>.>`);
//! * publishes events in the order given, each with its `Nats-Msg-Id`, holding them while NATS
//!   is unreachable and publishing them again until they are stored: a retry of an event that
//!   was stored already is dropped by JetStream's de-duplication, so each is stored once; when
//!   busy, it packs chat lines into one message (`publish.rs`);
//! * reads the stream in order from a given sequence with an ephemeral consumer of its own,
//!   recreated from the next sequence whenever it fails or skips (rather than async-nats'
//!   ordered consumer, which notices a lost consumer only after 30 s of missed heartbeats);
//! * sends and receives private messages over core NATS, one subject per host, outside the
//!   stream's subjects;
//! * keeps this host's checkpoints of the room, and at a fresh start hands over the newest one
//!   the stream can go on from (`checkpoints.rs`).

mod checkpoints;
mod publish;

use super::events;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{Context, ContextBuilder};
use async_nats::jetstream::stream;
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the bridge needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<String>,
    pub room: String,
    pub node: String,
    /// Replicas of the stream, if the bridge creates it.
    pub replicas: usize,
    /// The stream's `max_msgs` (see [`max_messages`]).
    pub max_messages: i64,
}

/// The stream keeps this many events at least: enough that `history` chat lines survive days of
/// an idle room's heartbeats, and that a host cut off for minutes in a busy room finds every
/// event it missed. Oldest first out.
pub fn max_messages(history: usize) -> i64 {
    i64::try_from(history.saturating_mul(100)).unwrap_or(i64::MAX).max(1_000_000)
}

/// The header on every message this release publishes: its host reads packed messages.
const READS_PACKED: &str = "Chatd-Reads-Packed";

/// How long JetStream remembers message ids: a retry within this is never stored twice. An
/// event sent just before an outage whose acknowledgement was lost is retried as soon as NATS
/// is back, so this bounds the outage after which such an event could be stored twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);

/// Caller → bridge.
#[derive(Debug)]
pub enum Command {
    /// Store an event in the stream; `id` is its `Nats-Msg-Id`, unique in the room. A
    /// `packable` one may share a stream message with the packable ones next to it, which only
    /// hosts that [`Report::Event::reads_packed`] can read.
    Publish { id: String, payload: Vec<u8>, packable: bool },
    /// A private message to the host `node`, over core NATS (not stored).
    Private { node: String, payload: Vec<u8> },
    /// This host's checkpoint of the room as applied up to `seq` (`cluster/checkpoint.rs`),
    /// replacing its previous one.
    Checkpoint { seq: u64, bytes: Vec<u8> },
}

/// Bridge → caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The connection to a NATS server is up (`true`) or lost (`false`).
    Connected(bool),
    /// The stream can be read (`true`) or its reading failed (`false`: no leader, deleted,
    /// connection lost): until `true` again, events are held.
    Stream(bool),
    /// A message of the stream, in stream order, each once: its events, one or several
    /// (`events::pack`), oldest first. `time_ms` is the stream's timestamp (ms since the Unix
    /// epoch). `reads_packed`: the host that published it reads packed messages.
    Event { seq: u64, time_ms: i64, payloads: Vec<Vec<u8>>, reads_packed: bool },
    /// Every event stored when the reader looked has been reported: once per consumer, when
    /// it first has nothing pending.
    CaughtUp,
    /// A published event is stored (`duplicate`: it was already, by an earlier try).
    Stored { id: String, seq: u64, duplicate: bool },
    /// A private message for this host.
    Private(Vec<u8>),
    /// The stream's `max_msgs`, once it could be read (the stream may have been created with
    /// other limits than this host's).
    Limit { max_messages: i64 },
    /// Started afresh: the newest usable checkpoint, before any event; reading goes on after
    /// the sequence it was taken at.
    Checkpoint(Vec<u8>),
    /// Something went wrong that only the log needs to know.
    Problem(String),
}

/// The handle of the bridge thread; dropping it stops the thread after a last flush of what is
/// held (at most [`STOP_FLUSH`]).
pub struct Bridge {
    commands: Option<UnboundedSender<Command>>,
    reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

/// How long a stopping bridge keeps trying to store what it holds.
pub const STOP_FLUSH: Duration = Duration::from_secs(2);
/// How long a publish waits for JetStream's acknowledgement before it is tried again.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The reading consumer's heartbeat: two missed and it is recreated.
const READ_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a starting host looks for a checkpoint before it reads the whole stream instead.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl Bridge {
    /// Starts the thread; it reads the stream from `from_seq` on, or, with `from_seq` 1 (a host
    /// that knows nothing of the room), from the newest checkpoint it finds. It connects in the
    /// background (and keeps trying), so this returns at once even while NATS is unreachable.
    pub fn start(settings: Settings, from_seq: u64, waker: Arc<mio::Waker>) -> io::Result<Bridge> {
        let (commands, commands_rx) = unbounded_channel();
        let (reports_tx, reports) = crossbeam_channel::unbounded();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let out = Out { tx: reports_tx, waker };
        let thread = std::thread::Builder::new().name("chatd-nats".into()).spawn(move || {
            runtime.block_on(run(settings, from_seq.max(1), commands_rx, out));
        })?;
        Ok(Bridge { commands: Some(commands), reports, thread: Some(thread) })
    }

    /// Hands a command to the bridge; never blocks.
    pub fn send(&self, command: Command) {
        if let Some(commands) = &self.commands {
            // The thread only ends when this handle is dropped.
            let _ = commands.send(command);
        }
    }

    /// What the bridge reported since the last call, oldest first.
    pub fn reports(&self) -> impl Iterator<Item = Report> + '_ {
        self.reports.try_iter()
    }

    /// Waits up to `timeout` for the next report (for tests and tools without a mio loop).
    pub fn next_report(&self, timeout: Duration) -> Option<Report> {
        self.reports.recv_timeout(timeout).ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Closing the channel is the stop signal.
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The report side: every report wakes the caller.
#[derive(Clone)]
struct Out {
    tx: Sender<Report>,
    waker: Arc<mio::Waker>,
}

impl Out {
    fn send(&self, report: Report) {
        if self.tx.send(report).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

fn stream_name(room: &str) -> String {
    format!("CHATD_{room}")
}

/// The subject of a host's private messages: not under `chatd.<room>.`, so never stored.
fn private_subject(room: &str, node: &str) -> String {
    format!("chatd-private.{room}.{node}")
}

async fn run(
    settings: Settings,
    from_seq: u64,
    mut commands: UnboundedReceiver<Command>,
    out: Out,
) {
    let events = out.clone();
    let (connected_tx, connected) = tokio::sync::watch::channel(false);
    let client = async_nats::ConnectOptions::new()
        .name(format!("chatd {}", settings.node))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // JetStream API requests (stream and consumer creation) wait this long, not the
        // context's timeout: async-nats' default of 10 s made a lost stream leader a pause of
        // 10 to 20 s for the readers whose consumer it held.
        .request_timeout(Some(ACK_TIMEOUT))
        .reconnect_delay_callback(|attempts| backoff(u32::try_from(attempts).unwrap_or(u32::MAX)))
        .event_callback(move |event| {
            let events = events.clone();
            let connected_tx = connected_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected_tx.send_replace(true);
                        events.send(Report::Connected(true));
                    }
                    async_nats::Event::Disconnected => {
                        connected_tx.send_replace(false);
                        events.send(Report::Connected(false));
                    }
                    other => events.send(Report::Problem(format!("NATS: {other}"))),
                }
            }
        })
        .connect(settings.urls.clone())
        .await;
    let client = match client {
        Ok(client) => client,
        Err(e) => return out.send(Report::Problem(format!("cannot use the NATS servers: {e}"))),
    };
    let js = ContextBuilder::new().timeout(ACK_TIMEOUT).build(client.clone());
    let (to_publisher, publisher_rx) = unbounded_channel();
    let publisher = tokio::spawn(publish::publish(
        js.clone(),
        settings.clone(),
        publisher_rx,
        connected,
        out.clone(),
    ));
    let (to_checkpoints, checkpoints_rx) = unbounded_channel();
    let checkpoints =
        tokio::spawn(checkpoints::write(js.clone(), settings.clone(), checkpoints_rx, out.clone()));
    let reader = tokio::spawn(read(js, settings.clone(), from_seq, out.clone()));
    let privates = tokio::spawn(receive_private(client.clone(), settings.clone(), out.clone()));
    while let Some(command) = commands.recv().await {
        match command {
            Command::Publish { id, payload, packable } => {
                let _ = to_publisher.send(publish::Waiting { id, payload, packable });
            }
            Command::Checkpoint { seq, bytes } => {
                let _ = to_checkpoints.send((seq, bytes));
            }
            Command::Private { node, payload } => {
                let subject = private_subject(&settings.room, &node);
                if let Err(e) = client.publish(subject, payload.into()).await {
                    out.send(Report::Problem(format!("private message to {node}: {e}")));
                }
            }
        }
    }
    // Stopping: the publisher finishes what it holds, for a while.
    drop(to_publisher);
    reader.abort();
    privates.abort();
    checkpoints.abort();
    let _ = tokio::time::timeout(STOP_FLUSH, publisher).await;
    let _ = tokio::time::timeout(STOP_FLUSH, client.flush()).await;
}

/// Reads the stream from `next` on, forever, reporting each event once and in order. A consumer
/// that fails is recreated at once; the stream is reported unreadable only when that fails too,
/// so a hiccup (a missed heartbeat on a busy machine) is no outage for the clients.
async fn read(js: Context, settings: Settings, mut next: u64, out: Out) {
    let mut failures = 0u32;
    let mut readable = false;
    let mut restore = next == 1;
    loop {
        let reading = read_once(&js, &settings, &mut next, &out, &mut readable, &mut restore);
        let problem = match reading.await {
            Ok(()) => "the consumer ended".to_owned(),
            Err(e) => e,
        };
        failures = if readable { 1 } else { failures + 1 };
        if readable {
            out.send(Report::Problem(format!("reading the stream again from {next}: {problem}")));
            readable = false;
            continue;
        }
        if failures == 2 {
            out.send(Report::Stream(false));
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// One consumer's life: creates the stream if needed (and, the first time with `restore`, looks
/// for a checkpoint to start from) and a consumer from `next`, then reports what it delivers
/// until it fails or skips a message.
async fn read_once(
    js: &Context,
    settings: &Settings,
    next: &mut u64,
    out: &Out,
    readable: &mut bool,
    restore: &mut bool,
) -> Result<(), String> {
    let config = stream::Config {
        name: stream_name(&settings.room),
        subjects: vec![format!("chatd.{}.>", settings.room)],
        num_replicas: settings.replicas,
        max_messages: settings.max_messages,
        duplicate_window: DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await.map_err(|e| e.to_string())?;
    let info = stream.cached_info().clone();
    if std::mem::take(restore) {
        let newest = checkpoints::newest(js, settings, &info, out);
        // A store that does not answer in time is no reason to wait: the stream is read whole.
        if let Ok(Some((seq, bytes))) = tokio::time::timeout(RESTORE_TIMEOUT, newest).await {
            out.send(Report::Checkpoint(bytes));
            *next = seq + 1;
        }
    }
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: *next },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer
        .stream()
        .heartbeat(READ_HEARTBEAT)
        .expires(READ_HEARTBEAT * 5)
        .max_messages_per_batch(500)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    if !*readable {
        *readable = true;
        out.send(Report::Limit { max_messages: info.config.max_messages });
        out.send(Report::Stream(true));
    }
    // Said once per consumer, not after every event: each report wakes the caller's loop.
    let mut caught_up = consumer.cached_info().num_pending == 0;
    if caught_up {
        out.send(Report::CaughtUp);
    }
    let mut delivered = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        if info.consumer_sequence != delivered + 1 {
            return Err(format!("the consumer skipped to {}", info.consumer_sequence));
        }
        delivered = info.consumer_sequence;
        let seq = info.stream_sequence;
        let time_ms = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        if seq >= *next {
            *next = seq + 1;
            let reads_packed =
                message.headers.as_ref().is_some_and(|h| h.get(READS_PACKED).is_some());
            match events::unpack(&message.payload) {
                Ok(events) => {
                    let payloads = events.into_iter().map(<[u8]>::to_vec).collect();
                    out.send(Report::Event { seq, time_ms, payloads, reads_packed });
                }
                // Every host of this release skips it alike.
                Err(e) => out.send(Report::Problem(format!("message {seq} skipped: {e}"))),
            }
        }
        if info.pending == 0 && !caught_up {
            caught_up = true;
            out.send(Report::CaughtUp);
        }
    }
    Ok(())
}

async fn receive_private(client: async_nats::Client, settings: Settings, out: Out) {
    let subject = private_subject(&settings.room, &settings.node);
    match client.subscribe(subject).await {
        Ok(mut messages) => {
            while let Some(message) = messages.next().await {
                out.send(Report::Private(message.payload.to_vec()));
            }
        }
        Err(e) => out.send(Report::Problem(format!("cannot receive private messages: {e}"))),
    }
}

/// 50 ms doubling to 1 s.
fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << attempts.min(5)).min(MAX_BACKOFF)
}
