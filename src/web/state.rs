//! A WebSocket session's framing state as data, to move it to another process on reload with
//! its TCP socket: the bytes of a frame header that has not fully arrived, the frame whose
//! payload is arriving, the fragmented message in progress, and how far the close handshake
//! went. It is described in the protocol's terms (frames, messages), not as the decoder's
//! fields, so the decoder can change without changing what travels. The process that restores
//! it goes on decoding where the other stopped; the client notices nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::frame::{MAX_CONTROL_PAYLOAD, MAX_PAYLOAD, PartialHeader};
use super::socket::{FrameKind, InFrame, Message, Utf8Tail, WebSocket};

/// Everything a [`WebSocket`] is, serialisable (serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebState {
    /// The first bytes of the next frame's header, fewer than a whole header.
    #[serde(with = "serde_bytes")]
    partial_header: Vec<u8>,
    /// The frame whose payload is arriving.
    frame: Option<FrameState>,
    /// The data message that frame (or the next) continues.
    message: MessageState,
    /// The server's close frame is written.
    sent_close: bool,
    /// The session is over (the client's close arrived, or its input broke the protocol).
    closed: bool,
    /// The client was told about a binary message and has sent no text since.
    told_binary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FrameState {
    kind: FrameKindState,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes received so far.
    received: u64,
    /// Payload bytes still to come.
    remaining: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum FrameKindState {
    /// A text, binary or continuation frame of [`WebState::message`].
    Data,
    /// A ping, with the (unmasked) payload received so far.
    Ping(#[serde(with = "serde_bytes")] Vec<u8>),
    Pong,
    /// A close frame, with the (unmasked) payload received so far.
    Close(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum MessageState {
    None,
    /// A text message, with the first bytes of a UTF-8 character whose end has not arrived.
    Text(#[serde(with = "serde_bytes")] Vec<u8>),
    Binary,
}

/// Why a [`WebState`] cannot be a WebSocket: it describes a state no session can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebRestoreError(&'static str);

impl fmt::Display for WebRestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a WebSocket state no session can be in: {}", self.0)
    }
}

impl std::error::Error for WebRestoreError {}

impl WebSocket {
    /// The session as data, for its successor.
    pub fn into_state(self) -> WebState {
        WebState {
            partial_header: self.header.as_slice().to_vec(),
            frame: self.frame.map(|frame| FrameState {
                kind: match frame.kind {
                    FrameKind::Data => FrameKindState::Data,
                    FrameKind::Ping(payload) => FrameKindState::Ping(payload),
                    FrameKind::Pong => FrameKindState::Pong,
                    FrameKind::Close(payload) => FrameKindState::Close(payload),
                },
                fin: frame.fin,
                mask: frame.mask,
                received: frame.received,
                remaining: frame.remaining,
            }),
            message: match self.message {
                Message::None => MessageState::None,
                Message::Text(tail) => MessageState::Text(tail.as_slice().to_vec()),
                Message::Binary => MessageState::Binary,
            },
            sent_close: self.sent_close,
            closed: self.closed,
            told_binary: self.told_binary,
        }
    }

    /// The session a [`WebState`] describes, checked first (it crossed a process boundary).
    pub fn restore(state: WebState) -> Result<WebSocket, WebRestoreError> {
        let header = PartialHeader::from_slice(&state.partial_header)
            .ok_or(WebRestoreError("a whole or over-long partial header"))?;
        let message = match &state.message {
            MessageState::None => Message::None,
            MessageState::Text(tail) => Message::Text(
                Utf8Tail::from_slice(tail).ok_or(WebRestoreError("not an unfinished character"))?,
            ),
            MessageState::Binary => Message::Binary,
        };
        let frame = match state.frame {
            None => None,
            Some(frame) => {
                if !state.partial_header.is_empty() {
                    return Err(WebRestoreError("a partial header inside a frame"));
                }
                Some(restore_frame(frame, message)?)
            }
        };
        Ok(WebSocket {
            header,
            frame,
            message,
            sent_close: state.sent_close,
            closed: state.closed,
            told_binary: state.told_binary,
        })
    }
}

fn restore_frame(frame: FrameState, message: Message) -> Result<InFrame, WebRestoreError> {
    let length = frame.received.checked_add(frame.remaining);
    if length.is_none_or(|length| length > MAX_PAYLOAD) {
        return Err(WebRestoreError("a frame length over 2^63"));
    }
    // A control frame is final and small, and its payload so far is all there.
    let small = frame.fin && frame.received + frame.remaining <= MAX_CONTROL_PAYLOAD as u64;
    let whole = |payload: &[u8]| small && payload.len() as u64 == frame.received;
    let kind = match frame.kind {
        FrameKindState::Data if message != Message::None => FrameKind::Data,
        FrameKindState::Ping(payload) if whole(&payload) => FrameKind::Ping(payload),
        FrameKindState::Pong if small => FrameKind::Pong,
        FrameKindState::Close(payload) if whole(&payload) => FrameKind::Close(payload),
        _ => return Err(WebRestoreError("a frame that does not fit its message")),
    };
    Ok(InFrame {
        kind,
        fin: frame.fin,
        mask: frame.mask,
        received: frame.received,
        remaining: frame.remaining,
    })
}
