//! Where checkpoints (`cluster/checkpoint.rs`) are kept: a JetStream object store beside the
//! stream, bucket `CHATD_<room>`, one object per host named after it. An object store because a
//! checkpoint of a big room is larger than one NATS message (it is sent in chunks), and one
//! object per host because two hosts replacing one object at once could leave it without its
//! chunks; every host's is equally good, so a starting host takes the newest it can use.
//!
//! Each object's metadata says the stream sequence it was taken at and when the stream was
//! created: a stream deleted and created again (docs/cluster.md, "Upgrades") starts its
//! sequences anew, and a checkpoint of the old one must not be read into the new one.

use super::{Out, Report, Settings};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::object_store::{self, ObjectMetadata};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use std::collections::HashMap;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedReceiver;

const SEQ: &str = "chatd-seq";
const STREAM_CREATED: &str = "chatd-stream-created";

fn bucket(room: &str) -> String {
    format!("CHATD_{room}")
}

/// The stream's creation time as the metadata carries it.
fn created(info: &stream::Info) -> String {
    info.created.unix_timestamp_nanos().to_string()
}

/// The newest checkpoint the stream `info` can go on from: taken at a sequence it still holds
/// the next message of, of this stream. Its sequence and bytes; `None` if there is none (or
/// the store cannot be read: the stream is then read whole, as without checkpoints).
pub async fn newest(
    js: &Context,
    settings: &Settings,
    info: &stream::Info,
    out: &Out,
) -> Option<(u64, Vec<u8>)> {
    let store = js.get_object_store(bucket(&settings.room)).await.ok()?;
    let mut usable = Vec::new();
    let mut list = match store.list().await {
        Ok(list) => list,
        Err(e) => {
            out.send(Report::Problem(format!("cannot list the checkpoints: {e}")));
            return None;
        }
    };
    while let Some(object) = list.next().await {
        let Ok(object) = object else { break };
        let seq = object.metadata.get(SEQ).and_then(|s| s.parse::<u64>().ok());
        let same_stream = object.metadata.get(STREAM_CREATED) == Some(&created(info));
        if let (Some(seq), true, false) = (seq, same_stream, object.deleted) {
            let state = &info.state;
            if seq + 1 >= state.first_sequence && seq <= state.last_sequence {
                usable.push((seq, object.name));
            }
        }
    }
    usable.sort();
    for (seq, name) in usable.into_iter().rev() {
        let mut bytes = Vec::new();
        let read = match store.get(&name).await {
            Ok(mut object) => object.read_to_end(&mut bytes).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(_) => return Some((seq, bytes)),
            Err(e) => {
                out.send(Report::Problem(format!("cannot read the checkpoint of {name}: {e}")))
            }
        }
    }
    None
}

/// Writes this host's checkpoints as they come, only the newest of those waiting; a failure is
/// reported and the next checkpoint tried in its time.
pub async fn write(
    js: Context,
    settings: Settings,
    mut incoming: UnboundedReceiver<(u64, Vec<u8>)>,
    out: Out,
) {
    while let Some(mut checkpoint) = incoming.recv().await {
        while let Ok(newer) = incoming.try_recv() {
            checkpoint = newer;
        }
        let (seq, bytes) = checkpoint;
        if let Err(e) = write_one(&js, &settings, seq, &bytes).await {
            out.send(Report::Problem(format!("checkpoint at {seq} not written: {e}")));
        }
    }
}

async fn write_one(
    js: &Context,
    settings: &Settings,
    seq: u64,
    bytes: &[u8],
) -> Result<(), String> {
    let stream =
        js.get_stream(super::stream_name(&settings.room)).await.map_err(|e| e.to_string())?;
    let store = match js.get_object_store(bucket(&settings.room)).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket(&settings.room),
                description: Some("chatd room checkpoints".to_owned()),
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?,
    };
    let metadata = HashMap::from([
        (SEQ.to_owned(), seq.to_string()),
        (STREAM_CREATED.to_owned(), created(stream.cached_info())),
    ]);
    let meta = ObjectMetadata { name: settings.node.clone(), metadata, ..Default::default() };
    store.put(meta, &mut &bytes[..]).await.map_err(|e| e.to_string())?;
    Ok(())
}
