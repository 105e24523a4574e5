//! RFC 6455 frames at the byte level, with tungstenite's frame types: the server's frames (a text
//! frame per line, pong, close) are written with `FrameHeader::format` and `Frame::format`, and a
//! client's frame headers are read with `FrameHeader::parse` from input that may stop anywhere.
//! What tungstenite keeps private — unmasking — is the few lines of XOR here.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader, Utf8Bytes};

/// The longest frame header: 2 bytes, 8 bytes of length, 4 of mask.
pub(super) const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: a control frame carries at most 125 bytes.
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;
/// RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
pub(super) const MAX_PAYLOAD: u64 = i64::MAX as u64;

/// The bytes of a frame header that has not fully arrived yet (fewer than a whole header), kept
/// inline: an idle connection holds no buffer for it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartialHeader {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

/// A header read from the input, with its payload length.
pub(super) type Header = (FrameHeader, u64);

/// A frame header whose opcode RFC 6455 reserves.
#[derive(Debug)]
pub(super) struct ReservedOpcode;

impl PartialHeader {
    /// The header bytes received so far.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Kept header bytes, as a [`super::WebState`] carries them: fewer than a whole header, and
    /// not yet a whole one.
    pub(super) fn from_slice(bytes: &[u8]) -> Option<PartialHeader> {
        if bytes.len() >= MAX_HEADER {
            return None;
        }
        let mut header = PartialHeader::default();
        header.bytes[..bytes.len()].copy_from_slice(bytes);
        header.len = u8::try_from(bytes.len()).ok()?;
        match FrameHeader::parse(&mut Cursor::new(header.as_slice())) {
            Ok(None) => Some(header),
            _ => None,
        }
    }

    /// Reads the next header from the kept bytes followed by `input`. Returns the header (or
    /// `None` when `input` ran out first: then all of it is kept) and how many bytes of `input`
    /// it took.
    pub(super) fn read(&mut self, input: &[u8]) -> Result<(Option<Header>, usize), ReservedOpcode> {
        if self.len == 0 {
            // The usual case: the whole header is in this read, nothing is copied.
            let mut cursor = Cursor::new(input);
            return match FrameHeader::parse(&mut cursor).map_err(|_| ReservedOpcode)? {
                Some(header) => Ok((Some(header), position(&cursor))),
                None => {
                    self.keep(input);
                    Ok((None, input.len()))
                }
            };
        }
        let before = usize::from(self.len);
        let take = input.len().min(MAX_HEADER - before);
        self.keep(&input[..take]);
        let mut cursor = Cursor::new(self.as_slice());
        let parsed = FrameHeader::parse(&mut cursor).map_err(|_| ReservedOpcode)?;
        match parsed {
            Some(header) => {
                let used = position(&cursor) - before;
                self.len = 0;
                Ok((Some(header), used))
            }
            None => Ok((None, take)),
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        let bytes = &bytes[..bytes.len().min(MAX_HEADER - at)];
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }
}

fn position(cursor: &Cursor<&[u8]>) -> usize {
    // The cursor's position is within the slice it reads.
    usize::try_from(cursor.position()).unwrap_or(usize::MAX)
}

/// Unmasks `bytes`, which start `offset` bytes into a payload masked with `mask`.
pub(super) fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let key = [0, 1, 2, 3].map(|i| mask[(shift + i) % 4]);
    let mut words = bytes.chunks_exact_mut(4);
    for word in &mut words {
        for (byte, k) in word.iter_mut().zip(key) {
            *byte ^= k;
        }
    }
    for (byte, k) in words.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// Appends one text frame per line of `lines` (whole lines ended by LF, a CR before it dropped;
/// a last line without its LF counts as a line too). Server frames are not masked, so the bytes
/// depend on the lines only: they are the same for every client.
pub fn frame_lines(lines: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let mut rest = lines;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            Ok(_) => put_header(&header, line.len(), out),
            Err(_) => {
                // A browser drops a connection over a text frame that is not UTF-8; the server's
                // lines are sanitised, so this only guards against a mistake.
                let text = String::from_utf8_lossy(line);
                put_header(&header, text.len(), out);
                out.extend_from_slice(text.as_bytes());
                continue;
            }
        }
        out.extend_from_slice(line);
    }
}

fn put_header(header: &FrameHeader, len: usize, out: &mut Vec<u8>) {
    // `io::Write for Vec<u8>` never fails, so neither does formatting into one.
    let written = header.format(len as u64, out);
    debug_assert!(written.is_ok());
}

fn put(frame: Frame, out: &mut Vec<u8>) {
    let written = frame.format(out);
    debug_assert!(written.is_ok());
}

/// Appends a pong answering a ping with `payload`.
pub(super) fn put_pong(payload: Vec<u8>, out: &mut Vec<u8>) {
    put(Frame::pong(payload), out);
}

/// Appends a close frame with `code` and no reason.
pub(super) fn put_close(code: CloseCode, out: &mut Vec<u8>) {
    let reason = Utf8Bytes::from_static("");
    put(Frame::close(Some(CloseFrame { code, reason })), out);
}
