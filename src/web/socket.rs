//! An established WebSocket connection, driven on byte buffers (docs/web.md): client frames in,
//! the lines they carry out for the `LineDecoder`, with the frames the server must answer;
//! lines in, text frames out.
//!
//! A text message is passed on as its payload followed by LF, streamed as it arrives: nothing of
//! a message is held here beyond an unfinished UTF-8 character (3 bytes) and an unfinished
//! frame header (13), so `max_line_bytes`, `! line too long` and sanitising are the
//! `LineDecoder`'s, exactly as on a plain connection, and a hostile client's huge message costs
//! no more memory than a line. Invalid UTF-8 becomes U+FFFD here, as a plain connection's does
//! in the decoder, which also keeps a stray 0xFF from reaching the decoder's telnet handling.

use std::fmt;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::frame::{
    self, MAX_CONTROL_PAYLOAD, MAX_PAYLOAD, PartialHeader, ReservedOpcode, put_close, put_pong,
};

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// What a client is told about a binary message, which is dropped (the connection stays).
pub const BINARY_NOTICE: &str = "! binary messages are not supported, send text";

/// The framing state of one upgraded connection. Small (no buffer is held between reads
/// except a ping's or close's payload of at most 125 bytes while it arrives).
#[derive(Debug)]
pub struct WebSocket {
    pub(super) header: PartialHeader,
    pub(super) frame: Option<InFrame>,
    pub(super) message: Message,
    /// The server's close frame is written: nothing may follow it.
    pub(super) sent_close: bool,
    /// The session is over: the client's close arrived, or its input was bad.
    pub(super) closed: bool,
    /// The client was told its binary messages are dropped, and sent no text since: the next
    /// binary message is dropped without telling it again, so a flood of tiny binary frames
    /// cannot make the server write more than one notice per text line (text is rate-limited).
    pub(super) told_binary: bool,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InFrame {
    pub(super) kind: FrameKind,
    pub(super) fin: bool,
    pub(super) mask: [u8; 4],
    /// Payload bytes received so far (the masking key's phase).
    pub(super) received: u64,
    pub(super) remaining: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FrameKind {
    /// Text, binary or continuation: [`WebSocket::message`] says which message it belongs to.
    Data,
    Ping(Vec<u8>),
    Pong,
    Close(Vec<u8>),
}

/// The data message in progress, possibly over several frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Message {
    None,
    /// A text message, with the start of a UTF-8 character cut by a frame or read boundary.
    Text(Utf8Tail),
    /// A binary message, dropped.
    Binary,
}

/// The first bytes (at most 3) of a UTF-8 character whose end has not arrived.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Utf8Tail {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Tail {
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The bytes as a tail, if they can start a character whose end is still to come.
    pub(super) fn from_slice(bytes: &[u8]) -> Option<Utf8Tail> {
        let unfinished = match std::str::from_utf8(bytes) {
            Ok(text) => text.is_empty(),
            Err(e) => e.valid_up_to() == 0 && e.error_len().is_none(),
        };
        if !unfinished || bytes.len() > 3 {
            return None;
        }
        let mut tail = Utf8Tail::default();
        tail.bytes[..bytes.len()].copy_from_slice(bytes);
        tail.len = bytes.len() as u8;
        Some(tail)
    }
}

/// How the session stands after some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Go on reading.
    Open,
    /// The client closed the WebSocket (with this code, if it gave one). The answering close
    /// frame, if the server had not sent one already, is in `reply`: write it, then close.
    Closed { code: Option<u16> },
}

/// Input that breaks RFC 6455. The close frame with [`WsError::code`] is already in `reply`
/// (unless the server had sent its close before): write it, then close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A client frame without a mask (RFC 6455 §5.1).
    Unmasked,
    /// RSV bits set, with no extension negotiated.
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    ReservedOpcode,
    /// A payload length with its most significant bit set.
    BadLength,
    /// A control frame over 125 bytes or fragmented.
    BadControlFrame,
    /// A continuation frame with no message to continue.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    UnfinishedMessage,
    /// A close frame with a 1-byte payload or a code that may not be sent.
    BadClose,
    /// A close frame whose reason is not UTF-8.
    BadCloseReason,
}

impl WsError {
    /// The close code the server answers with: 1002 (protocol error), or 1007 for text that is
    /// not UTF-8 where the RFC gives no choice (a close reason).
    pub fn code(self) -> CloseCode {
        match self {
            WsError::BadCloseReason => CloseCode::Invalid,
            _ => CloseCode::Protocol,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WsError::Unmasked => "an unmasked client frame",
            WsError::ReservedBits => "a frame with reserved bits set",
            WsError::ReservedOpcode => "a frame with a reserved opcode",
            WsError::BadLength => "a frame length over 2^63",
            WsError::BadControlFrame => "a control frame over 125 bytes or fragmented",
            WsError::UnexpectedContinuation => "a continuation frame outside a message",
            WsError::UnfinishedMessage => "a new message inside a fragmented one",
            WsError::BadClose => "a close frame with a bad code",
            WsError::BadCloseReason => "a close reason that is not UTF-8",
        })
    }
}

impl std::error::Error for WsError {}

impl WebSocket {
    /// A connection just upgraded.
    pub(super) fn new() -> WebSocket {
        WebSocket {
            header: PartialHeader::default(),
            frame: None,
            message: Message::None,
            sent_close: false,
            closed: false,
            told_binary: false,
        }
    }

    /// Whole lines (CRLF or LF ended) to text frames, one per line, appended to `out`; nothing
    /// once the server's close is written.
    pub fn encode(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        if !self.sent_close {
            frame::frame_lines(lines, out);
        }
    }

    /// The server ends the session: appends its close frame (1000, or 1001 when the server
    /// shuts down), after which nothing more is encoded. The client's close answer then comes
    /// through [`WebSocket::decode`] as [`Decoded::Closed`].
    pub fn close(&mut self, code: CloseCode, out: &mut Vec<u8>) {
        if !self.sent_close {
            self.sent_close = true;
            put_close(code, out);
        }
    }

    /// Client bytes in: appends each text message's payload and an LF to `lines` (as they
    /// arrive, a message possibly in many pieces) and the frames to send back to `reply` (pong,
    /// the notice about a binary message, close). After [`Decoded::Closed`] or an error, input
    /// is ignored.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        lines: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<Decoded, WsError> {
        if self.closed {
            return Ok(Decoded::Closed { code: None });
        }
        loop {
            if self.frame.is_none() {
                if input.is_empty() {
                    return Ok(Decoded::Open);
                }
                let read = self.header.read(input);
                let (parsed, used) =
                    read.map_err(|ReservedOpcode| self.fail(WsError::ReservedOpcode, reply))?;
                input = &input[used..];
                let Some((header, len)) = parsed else {
                    return Ok(Decoded::Open);
                };
                let frame = self.begin(&header, len).map_err(|e| self.fail(e, reply))?;
                self.frame = Some(frame);
            }
            let remaining = self.frame.as_ref().map_or(0, |frame| frame.remaining);
            let take = input.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let (chunk, rest) = input.split_at(take);
            input = rest;
            self.payload(chunk, lines);
            if remaining > take as u64 {
                return Ok(Decoded::Open);
            }
            if let Some(frame) = self.frame.take() {
                let end = self.end(frame, lines, reply).map_err(|e| self.fail(e, reply))?;
                if let Some(closed) = end {
                    return Ok(closed);
                }
            }
        }
    }

    /// Checks a frame header against RFC 6455 and what this session is in the middle of.
    fn begin(&mut self, header: &FrameHeader, len: u64) -> Result<InFrame, WsError> {
        let mask = header.mask.ok_or(WsError::Unmasked)?;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::ReservedBits);
        }
        if len > MAX_PAYLOAD {
            return Err(WsError::BadLength);
        }
        let kind = match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(WsError::BadControlFrame);
                }
                match control {
                    Control::Ping => FrameKind::Ping(Vec::new()),
                    Control::Pong => FrameKind::Pong,
                    Control::Close => FrameKind::Close(Vec::new()),
                    Control::Reserved(_) => return Err(WsError::ReservedOpcode),
                }
            }
            OpCode::Data(data) => {
                match (data, self.message) {
                    (Data::Continue, Message::None) => return Err(WsError::UnexpectedContinuation),
                    (Data::Continue, _) => {}
                    (Data::Text | Data::Binary, Message::Text(_) | Message::Binary) => {
                        return Err(WsError::UnfinishedMessage);
                    }
                    (Data::Text, Message::None) => {
                        self.message = Message::Text(Utf8Tail::default())
                    }
                    (Data::Binary, Message::None) => self.message = Message::Binary,
                    (Data::Reserved(_), _) => return Err(WsError::ReservedOpcode),
                }
                FrameKind::Data
            }
        };
        Ok(InFrame { kind, fin: header.is_final, mask, received: 0, remaining: len })
    }

    /// Takes a piece of the current frame's payload.
    fn payload(&mut self, chunk: &[u8], lines: &mut Vec<u8>) {
        let Some(frame) = self.frame.as_mut() else {
            return;
        };
        let offset = frame.received;
        frame.received += chunk.len() as u64;
        frame.remaining -= chunk.len() as u64;
        match (&mut frame.kind, &mut self.message) {
            (FrameKind::Data, Message::Text(tail)) => text(chunk, frame.mask, offset, tail, lines),
            (FrameKind::Ping(payload) | FrameKind::Close(payload), _) => {
                let at = payload.len();
                payload.extend_from_slice(chunk);
                frame::unmask(&mut payload[at..], frame.mask, offset);
            }
            // A binary message's payload and a pong's are dropped unread.
            _ => {}
        }
    }

    /// A frame's payload is complete.
    fn end(
        &mut self,
        frame: InFrame,
        lines: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<Option<Decoded>, WsError> {
        match frame.kind {
            FrameKind::Data if frame.fin => {
                match self.message {
                    Message::Text(tail) => {
                        if tail.len > 0 {
                            lines.extend_from_slice(REPLACEMENT);
                        }
                        lines.push(b'\n');
                        self.told_binary = false;
                    }
                    Message::Binary if !self.sent_close && !self.told_binary => {
                        frame::frame_lines(BINARY_NOTICE.as_bytes(), reply);
                        self.told_binary = true;
                    }
                    _ => {}
                }
                self.message = Message::None;
            }
            FrameKind::Data | FrameKind::Pong => {}
            FrameKind::Ping(payload) => {
                if !self.sent_close {
                    put_pong(payload, reply);
                }
            }
            FrameKind::Close(payload) => {
                let code = close_code(&payload)?;
                self.closed = true;
                // The client's code is echoed, as RFC 6455 §5.5.1 suggests.
                let answer = code.map_or(CloseCode::Normal, CloseCode::from);
                self.close(answer, reply);
                return Ok(Some(Decoded::Closed { code }));
            }
        }
        Ok(None)
    }

    /// The session breaks on bad input: the close frame for it goes into `reply`.
    fn fail(&mut self, error: WsError, reply: &mut Vec<u8>) -> WsError {
        self.closed = true;
        self.frame = None;
        self.close(error.code(), reply);
        error
    }
}

/// The code of a close frame's payload, checked (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::BadClose),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(WsError::BadClose);
            }
            std::str::from_utf8(reason).map_err(|_| WsError::BadCloseReason)?;
            Ok(Some(code))
        }
    }
}

/// Unmasks a piece of a text message onto `lines`, invalid UTF-8 replaced by U+FFFD and a
/// character cut at the end of the piece kept in `tail` for the next one.
fn text(chunk: &[u8], mask: [u8; 4], offset: u64, tail: &mut Utf8Tail, lines: &mut Vec<u8>) {
    let start = lines.len();
    lines.extend_from_slice(tail.as_slice());
    *tail = Utf8Tail::default();
    let at = lines.len();
    lines.extend_from_slice(chunk);
    frame::unmask(&mut lines[at..], mask, offset);
    if std::str::from_utf8(&lines[start..]).is_ok() {
        return;
    }
    let region = lines.split_off(start);
    let mut rest = region.as_slice();
    loop {
        match std::str::from_utf8(rest) {
            Ok(_) => {
                lines.extend_from_slice(rest);
                return;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                lines.extend_from_slice(valid);
                match e.error_len() {
                    Some(bad) => {
                        lines.extend_from_slice(REPLACEMENT);
                        rest = &after[bad..];
                    }
                    None => {
                        // An unfinished character (at most 3 bytes) at the end of the piece.
                        *tail = Utf8Tail::from_slice(after).unwrap_or_default();
                        return;
                    }
                }
            }
        }
    }
}
