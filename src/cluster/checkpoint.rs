//! Checkpoints: the room as applied up to a stream sequence, so a starting host need not read
//! the stream from its first message.
//!
//! The stream keeps a bounded number of messages (`bridge::max_messages`). A host that starts
//! after the oldest ones were dropped could not compute the room from what is left: the joins
//! and nick changes of long-present members, and the guest numbers they took, are gone, and its
//! room would differ from the others'. And even while nothing is dropped, reading a million
//! messages delays a starting host's first welcome. So every host writes down, every quarter
//! of the stream's `max_msgs`, the room it has applied ([`Room`], equal on every host at the same
//! sequence) with its `/history` lines, in a JetStream object store next to the stream (one
//! object per host, `bridge/checkpoints.rs`). A host that starts afresh reads the newest one
//! whose next sequence the stream still holds, and reads the stream on from there; without one
//! it reads the whole stream, as before.
//!
//! The history lines are the writing host's rendering (its `time_format` and templates): hosts
//! of one room are meant to share a configuration.

use super::room::Room;
use super::{Cluster, Output};
use serde::{Deserialize, Serialize};

/// The format's version, its first byte: a host refuses a checkpoint it cannot read and reads
/// the stream instead.
const VERSION: u8 = 1;

/// The room applied up to `seq` (its last sequence), and the history lines it had then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub room: Room,
    pub history: Vec<String>,
}

impl Checkpoint {
    /// The stream sequence the room was applied up to: reading goes on after it.
    pub fn seq(&self) -> u64 {
        self.room.last_seq()
    }
}

pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let mut bytes = vec![VERSION];
    // Writing into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(checkpoint).unwrap_or_default());
    bytes
}

pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!("version {version}, this release reads {VERSION}")),
        None => Err("empty".to_owned()),
    }
}

/// How many stream messages apart a host writes checkpoints: a quarter of the stream's
/// `max_msgs`, so the oldest message still needed is dropped only long after a newer
/// checkpoint exists, and a starting host reads at most about that many.
/// A stream without a message limit (`-1`) counts as one of a million.
pub fn every(max_messages: i64) -> u64 {
    let max = if max_messages > 0 { max_messages } else { 1_000_000 };
    u64::try_from(max / 4).unwrap_or(0).max(1)
}

impl Cluster {
    /// A checkpoint is due: the room went `every` messages past the last one (written or read),
    /// and this host knows its room (not reading on after a crash).
    pub fn checkpoint_due(&self) -> bool {
        let last = self.room.last_seq();
        self.checkpoint_every.is_some_and(|every| last >= self.checkpoint_seq.saturating_add(every))
            && self.resuming.is_none()
    }

    /// Writes a checkpoint of the room as applied now, with the hub's `history` lines: call it
    /// when [`Cluster::checkpoint_due`] says so, with the history as of the same changes.
    pub fn checkpoint(&mut self, history: Vec<String>) {
        let checkpoint = Checkpoint { room: self.room.clone(), history };
        self.checkpoint_seq = checkpoint.seq();
        self.bridge.send(super::bridge::Command::Checkpoint {
            seq: checkpoint.seq(),
            bytes: encode(&checkpoint),
        });
    }

    /// The sequence of the last checkpoint this host wrote or started from (0: none).
    pub fn checkpoint_seq(&self) -> u64 {
        self.checkpoint_seq
    }

    /// A checkpoint read at start, before any event: the room becomes its room.
    pub(super) fn restore(&mut self, bytes: &[u8], out: &mut Vec<Output>) {
        if self.room.last_seq() > 0 {
            return;
        }
        match decode(bytes) {
            Ok(checkpoint) => {
                log::info!(
                    "cluster: starting from the checkpoint at {} ({} members), reading on after it",
                    checkpoint.seq(),
                    checkpoint.room.online()
                );
                self.checkpoint_seq = checkpoint.seq();
                self.room = checkpoint.room;
                out.push(Output::Restored { history: checkpoint.history });
            }
            Err(e) => log::warn!("cluster: checkpoint unreadable ({e}); reading the whole stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::message::SessionId;
    use crate::cluster::events::{Envelope, Event};

    #[test]
    fn a_checkpoint_comes_back_as_written_and_another_version_is_refused() {
        let mut room = Room::new();
        let addr = "127.0.0.1:9".parse().expect("addr");
        let event = |n, event| Envelope { node: "a".into(), generation: 7, n, event };
        room.apply(3, 1_000, event(1, Event::Join { session: SessionId(1), addr }));
        room.apply(5, 2_000, event(2, Event::Nick { session: SessionId(1), nick: "ann".into() }));
        let checkpoint = Checkpoint { room, history: vec!["12:00 <ann> hi".into()] };
        let bytes = encode(&checkpoint);
        let back = decode(&bytes).expect("decode");
        assert_eq!(back, checkpoint);
        assert_eq!(back.seq(), 5);
        assert_eq!(back.room.by_nick("ANN").map(|(id, _)| id.0), Some(3));
        let mut newer = bytes.clone();
        newer[0] = VERSION + 1;
        assert!(decode(&newer).is_err_and(|e| e.contains("version")));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn checkpoints_come_every_quarter_of_the_stream() {
        assert_eq!(every(1_000_000), 250_000);
        assert_eq!(every(60), 15);
        assert_eq!(every(2), 1);
        assert_eq!(every(-1), 250_000);
    }
}
