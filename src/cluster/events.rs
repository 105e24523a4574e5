//! The room's events as they travel in the JetStream stream, and private messages as they
//! travel between hosts.
//!
//! Encoded with postcard behind one version byte. postcard rather than JSON: every chat line is
//! stored `replicas` times and sent to every host, and postcard is a third of the size of the
//! same event in JSON; it is also what the bus already speaks (`src/bus/`), so no new format and
//! no new dependency. The version byte comes first so a host can tell an event from a newer
//! release before trying to read it: a host that cannot read an event of the room cannot apply
//! it, and so must stop applying rather than go on with a different room than the others
//! (docs/cluster.md, "Upgrades").
//!
//! Events name the host that published them and its generation (a number it picks at start),
//! and sessions by the publishing host's own [`SessionId`]: a member of the room is
//! `(node, session)` until the state machine numbers it (`room::MemberId`).

use crate::bus::message::{LeaveReason, SessionId};
use crate::moderation::Target;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// The version byte in front of every encoded event and private message. Version 1 envelopes
/// had no [`Envelope::n`]; [`decode_envelope`] still reads them, so a stream written by an older
/// release keeps its history.
pub const VERSION: u8 = 2;

/// The first byte of a stream message that packs several encoded events ([`pack`]). It takes
/// the place of a version byte, so a release from before packing refuses the message as one of
/// a newer version rather than misreading it.
pub const PACKED: u8 = 3;

/// One event in the stream: who published it and what it says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The publishing host's `cluster.node`.
    pub node: String,
    /// The publishing host's generation: a new one each time chatd starts on it, so events of a
    /// host declared gone can be told from those of its next life.
    pub generation: u64,
    /// The event's number among those of this host's generation, from 1 (the counter of its
    /// `Nats-Msg-Id`): the room applies a host's events in this order even when a retry was
    /// stored after a later event (docs/cluster.md, "Order of one host's events"). 0: not
    /// numbered (version 1), applied where it is stored.
    pub n: u64,
    pub event: Event,
}

/// An envelope as version 1 wrote it.
#[derive(Deserialize)]
struct EnvelopeV1 {
    node: String,
    generation: u64,
    event: Event,
}

/// What happened. New kinds go at the end (postcard numbers them by position).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The host is alive (every second), with how many clients it serves.
    Beat {
        clients: u32,
    },
    /// The host stops cleanly; its clients left before it, each with a `Leave` of its own.
    HostDown,
    /// A host noticed another one silent for `host_timeout`. `last_seq` is the stream sequence
    /// of that host's last event it had seen: a declaration made before a later sign of life
    /// is stale and ignored.
    HostGone {
        node: String,
        generation: u64,
        last_seq: u64,
    },
    /// A client enters the room; the room names it `guest-N`.
    Join {
        session: SessionId,
        addr: SocketAddr,
    },
    Leave {
        session: SessionId,
        reason: LeaveReason,
    },
    Say {
        session: SessionId,
        text: String,
    },
    Me {
        session: SessionId,
        text: String,
    },
    /// A claim on a nickname, checked (valid, not reserved, not the same) by the claiming host;
    /// the room decides whether it is free at this place in the stream.
    Nick {
        session: SessionId,
        nick: String,
    },
    /// `chatd say`.
    Notice {
        text: String,
    },
    /// The host's members as the room knows them, published when it sees another host start:
    /// that host may have found the stream without the joins of long-present members (the
    /// stream keeps a bounded number of events), and learns them from here. Hosts that know
    /// them already change nothing.
    Roster {
        members: Vec<RosterEntry>,
        next_guest: u64,
    },
    /// `chatd kick` on any host, for the member `session` of host `node`: that host removes it
    /// (its `Leave` says `kicked`).
    Kick {
        node: String,
        session: SessionId,
        reason: Option<String>,
    },
    /// `chatd ban` on any host: every host keeps it and kicks its matching clients.
    /// `until_ms`: when it ends, ms since the Unix epoch; `None`: until lifted.
    Ban {
        target: Target,
        until_ms: Option<i64>,
        reason: Option<String>,
    },
    /// `chatd unban` on any host.
    Unban {
        target: Target,
    },
}

/// One member in a [`Event::Roster`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// Its number in the room: the stream sequence of its join.
    pub id: u64,
    pub session: SessionId,
    pub nick: String,
    pub addr: SocketAddr,
}

/// A `/msg` to a member served by another host; sent over core NATS to that host alone, never
/// into the stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Private {
    /// The sender's nick as the sending host knows it.
    pub from: String,
    /// The receiver, a session of the host the message is sent to.
    pub to: SessionId,
    pub text: String,
}

/// Why bytes from NATS are not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    /// From a release that speaks another version.
    Version(u8),
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty message"),
            DecodeError::Version(v) => {
                write!(f, "event version {v}, this release reads version {VERSION}")
            }
            DecodeError::Malformed(e) => write!(f, "malformed event: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The version byte, then the value in postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let bytes = vec![VERSION];
    // Serialising these plain types into a Vec cannot fail; should it, the message goes out
    // empty and every reader refuses it as such.
    postcard::to_extend(value, bytes).unwrap_or_default()
}

/// The reverse of [`encode`]; trailing bytes are refused, so a damaged message is not taken for
/// another one.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    match postcard::take_from_bytes(rest) {
        Ok((value, [])) => Ok(value),
        Ok((_, extra)) => {
            Err(DecodeError::Malformed(format!("{} bytes after the end", extra.len())))
        }
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// An event from the stream, of this version or of version 1.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    match bytes.split_first() {
        Some((1, rest)) => {
            let mut current = vec![VERSION];
            current.extend_from_slice(rest);
            let EnvelopeV1 { node, generation, event } = decode(&current)?;
            Ok(Envelope { node, generation, n: 0, event })
        }
        _ => decode(bytes),
    }
}

/// One stream message carrying several events already encoded with [`encode`]: [`PACKED`],
/// then each event as its length (u32, little-endian) and its bytes.
pub fn pack<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut message = vec![PACKED];
    for event in events {
        // An event is at most `chat.max_line_bytes` (512 KiB in cluster mode) and a bit.
        let len = u32::try_from(event.len()).unwrap_or(u32::MAX);
        message.extend_from_slice(&len.to_le_bytes());
        message.extend_from_slice(event);
    }
    message
}

/// The encoded events of one stream message, in order: those of a [`pack`], or the message
/// itself when it is a single event.
pub fn unpack(message: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let Some((&PACKED, mut rest)) = message.split_first() else {
        return Ok(vec![message]);
    };
    let mut events = Vec::new();
    while !rest.is_empty() {
        let cut =
            || DecodeError::Malformed(format!("packed message cut after {} events", events.len()));
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(cut)?;
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| cut())?;
        if len > tail.len() {
            return Err(cut());
        }
        let (event, tail) = tail.split_at(len);
        events.push(event);
        rest = tail;
    }
    if events.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Event) -> Envelope {
        Envelope { node: "web1".into(), generation: 7, n: 3, event }
    }

    #[test]
    fn round_trip_of_every_kind() {
        let session = SessionId(3);
        let events = [
            Event::Beat { clients: 12 },
            Event::HostDown,
            Event::HostGone { node: "web2".into(), generation: 9, last_seq: 44 },
            Event::Join { session, addr: "[::1]:4000".parse().unwrap() },
            Event::Leave { session, reason: LeaveReason::Quit(Some("bye".into())) },
            Event::Say { session, text: "hello ✓".into() },
            Event::Me { session, text: "waves".into() },
            Event::Nick { session, nick: "bob".into() },
            Event::Notice { text: "maintenance at 5".into() },
            Event::Roster {
                members: vec![RosterEntry {
                    id: 5,
                    session,
                    nick: "bob".into(),
                    addr: "10.0.0.1:5".parse().unwrap(),
                }],
                next_guest: 6,
            },
        ];
        for event in events {
            let bytes = encode(&envelope(event.clone()));
            assert_eq!(bytes[0], VERSION);
            assert_eq!(decode::<Envelope>(&bytes), Ok(envelope(event)));
        }
        let private = Private { from: "alice".into(), to: session, text: "psst".into() };
        assert_eq!(decode::<Private>(&encode(&private)), Ok(private));
    }

    #[test]
    fn compact() {
        let say = envelope(Event::Say { session: SessionId(1234), text: "hello there".into() });
        let bytes = encode(&say);
        // version, node (1 + 4), generation, n, variant, session (varint), text (1 + 11).
        assert_eq!(bytes.len(), 1 + 5 + 1 + 1 + 1 + 2 + 12);
    }

    #[test]
    fn version_1_envelopes_are_read_unnumbered() {
        let v1 = (String::from("web1"), 7u64, Event::HostDown);
        let mut bytes = vec![1];
        bytes.extend(postcard::to_allocvec(&v1).unwrap());
        let expected =
            Envelope { node: "web1".into(), generation: 7, n: 0, event: Event::HostDown };
        assert_eq!(decode_envelope(&bytes), Ok(expected.clone()));
        let mut expected = expected;
        expected.n = 4;
        assert_eq!(decode_envelope(&encode(&expected)), Ok(expected));
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        assert_eq!(decode::<Envelope>(&[]), Err(DecodeError::Empty));
        let mut bytes = encode(&envelope(Event::HostDown));
        assert!(decode::<Envelope>(&bytes[..bytes.len() - 1]).is_err());
        bytes.push(0);
        assert!(matches!(decode::<Envelope>(&bytes), Err(DecodeError::Malformed(_))));
        bytes[0] = VERSION + 1;
        assert_eq!(decode::<Envelope>(&bytes), Err(DecodeError::Version(VERSION + 1)));
        assert!(matches!(decode::<Envelope>(&[VERSION, 0xff]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn packed_events_come_back_one_by_one_in_order() {
        let events: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                encode(&envelope(Event::Say {
                    session: SessionId(i),
                    text: "x".repeat(i as usize),
                }))
            })
            .collect();
        let message = pack(events.iter().map(Vec::as_slice));
        assert_eq!(message[0], PACKED);
        let back = unpack(&message).expect("unpack");
        assert_eq!(back, events.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // A single event is its own message.
        assert_eq!(unpack(&events[0]), Ok(vec![events[0].as_slice()]));
        // Before packing, a release refused a packed message as of a newer version.
        assert_eq!(decode::<Envelope>(&message), Err(DecodeError::Version(PACKED)));
    }

    #[test]
    fn a_damaged_packed_message_is_refused_whole() {
        let events = [encode(&envelope(Event::HostDown)), encode(&envelope(Event::HostDown))];
        let message = pack(events.iter().map(Vec::as_slice));
        for cut in 2..message.len() {
            if cut == 1 + 4 + events[0].len() {
                continue;
            }
            assert!(
                matches!(unpack(&message[..cut]), Err(DecodeError::Malformed(_))),
                "cut at {cut}"
            );
        }
        assert_eq!(unpack(&[PACKED]), Err(DecodeError::Empty));
    }
}
