//! Bus frames: `[u32 length, little-endian][u8 version][postcard body]`.
//!
//! The length covers the version byte and the body, so a reader can skip or reject a frame
//! without understanding it. The version byte lets a worker of one release refuse to talk to a
//! supervisor of another instead of misreading it: during a rolling reload onto an upgraded
//! binary, old and new code meet on the bus.

use serde::{Serialize, de::DeserializeOwned};
use std::fmt;

/// Version of the frame layout and of the messages in [`super::message`]. Bump it whenever
/// either changes shape.
pub const VERSION: u8 = 4;

/// Bytes before the body: length (4) + version (1).
pub const HEADER_LEN: usize = 5;

/// Upper bound of one frame, checked by the writer as well as the reader: anything larger is a
/// corrupted or hostile stream, and a writer never makes one (long answers are split, see
/// [`super::message::split_lines`]). Generous because a worker's setup frame carries the whole
/// config file.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a byte stream could not be turned into a message.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is zero or larger than [`MAX_FRAME_LEN`].
    BadLength(usize),
    /// The peer speaks another frame version.
    Version(u8),
    /// The body is not a valid message.
    Body(String),
    /// A message to send would make a frame over [`MAX_FRAME_LEN`]; it is not sent.
    TooLarge(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength(n) => write!(f, "bad frame length {n}"),
            FrameError::Version(v) => write!(f, "frame version {v}, expected {VERSION}"),
            FrameError::Body(e) => write!(f, "malformed frame body: {e}"),
            FrameError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes is over the limit of {MAX_FRAME_LEN}; not sent")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one encoded frame to `out`, or nothing if it would be over [`MAX_FRAME_LEN`]: the
/// peer would take such a frame for a corrupted stream and drop the connection.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, VERSION]);
    // Serializing our own message types into a Vec cannot fail: there is no I/O and every type
    // on the bus is plainly serializable. Should that ever change, the frame is dropped whole.
    match postcard::to_extend(msg, std::mem::take(out)) {
        Ok(buf) => *out = buf,
        Err(_) => unreachable!("bus messages always serialize"),
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes one frame into a fresh buffer (used when the same frame goes to many peers).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(64);
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Tries to decode one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the message and the number of bytes it
/// used.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let version = buf[4];
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let body = &buf[HEADER_LEN..4 + len];
    let msg = postcard::from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))?;
    Ok(Some((msg, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::message::{
        LeaveReason, RoomRequest, RoomUpdate, SessionId, ToHub, ToWorker, WorkerOrder, WorkerReport,
    };

    fn direct(lines: Vec<String>) -> ToWorker {
        ToWorker::Room(RoomUpdate::Direct { session: SessionId(1), lines })
    }

    #[test]
    fn round_trip_and_partial_input() {
        let msgs = vec![
            ToHub::Room(RoomRequest::Say { session: SessionId(7), text: "héllo".into() }),
            ToHub::Room(RoomRequest::Leave {
                session: SessionId(7),
                reason: LeaveReason::Quit(Some("bye".into())),
            }),
            ToHub::Control(WorkerReport::Heartbeat { counters: Default::default() }),
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            encode_into(m, &mut bytes).unwrap();
        }
        // Every prefix that cuts a frame asks for more bytes instead of failing.
        for cut in 0..bytes.len() {
            let mut pos = 0;
            while let Some((_, used)) = decode::<ToHub>(&bytes[pos..cut]).unwrap() {
                pos += used;
            }
        }
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((m, used)) = decode::<ToHub>(&bytes[pos..]).unwrap() {
            out.push(m);
            pos += used;
        }
        assert_eq!(out, msgs);
    }

    #[test]
    fn rejects_bad_length_version_and_body() {
        assert_eq!(decode::<ToHub>(&[0, 0, 0, 0, 1]), Err(FrameError::BadLength(0)));
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(decode::<ToHub>(&huge), Err(FrameError::BadLength(_))));
        let mut frame = encode(&ToWorker::Control(WorkerOrder::Shutdown)).unwrap();
        frame[4] = VERSION + 1;
        assert_eq!(decode::<ToWorker>(&frame), Err(FrameError::Version(VERSION + 1)));
        let garbage = [2, 0, 0, 0, VERSION, 250];
        assert!(matches!(decode::<ToWorker>(&garbage), Err(FrameError::Body(_))));
    }

    #[test]
    fn refuses_to_write_a_frame_over_the_limit() {
        let mut out = vec![1, 2, 3];
        let big = direct(vec!["x".repeat(MAX_FRAME_LEN)]);
        assert!(matches!(encode_into(&big, &mut out), Err(FrameError::TooLarge(_))));
        // Nothing half-written is left behind.
        assert_eq!(out, vec![1, 2, 3]);
        let fits = direct(vec!["x".repeat(MAX_FRAME_LEN - 64)]);
        encode_into(&fits, &mut out).unwrap();
        assert!(decode::<ToWorker>(&out[3..]).unwrap().is_some());
    }
}
