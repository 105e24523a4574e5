//! Turning a client's byte stream into sanitized lines.
//!
//! A client may send anything: a line in pieces over many reads, many lines in one read, telnet
//! negotiation cut anywhere, or megabytes without a newline. The decoder turns that into whole
//! lines while holding at most one line's worth of input — `max_line_bytes`, plus one byte for a
//! CR that may turn out to precede the LF — so a hostile client costs no more memory than a
//! chatty one, and an idle connection holds (almost) nothing.
//!
//! On reload a session, half-received line and telnet command included, moves to a worker in
//! another process: [`LineDecoder::export`] describes what the decoder holds as a
//! [`PendingInput`] record, in terms of the protocol rather than of the decoder's fields, and
//! [`LineDecoder::restore`] carries on from one.
//!
//! A line that arrives whole within one read — nearly all of them — is sanitized straight from
//! the read buffer; only a line split across reads is copied into the decoder first.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::sanitize::{is_blank, sanitize};

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DONT: u8 = 254;

/// Capacity of a finished line's buffer that is kept for the next split line; larger buffers are
/// freed so that idle connections stay small.
const KEEP_PARTIAL: usize = 128;
/// Likewise for the queue of finished items, in items.
const KEEP_READY: usize = 8;

/// One finished item of input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decoded {
    /// A sanitized line, never blank.
    Line(String),
    /// A line was longer than `max_line_bytes`; it is discarded up to its LF.
    TooLong,
}

/// Everything a decoder holds between two reads, for the session hand-off (`bus::handoff`):
/// what the client sent that is not a processed line yet. Restored with
/// [`LineDecoder::restore`], a decoder goes on exactly as the exported one would have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInput {
    /// Finished items not taken yet, oldest first.
    pub ready: Vec<Decoded>,
    /// The unfinished line so far: data bytes, telnet commands removed (`IAC IAC` as one 0xFF),
    /// possibly ending inside a UTF-8 sequence or with the CR of a CR LF.
    #[serde(with = "serde_bytes")]
    pub partial: Vec<u8>,
    /// The unfinished line is already too long (its `TooLong` is reported): everything up to
    /// its LF is dropped. `partial` is empty then.
    pub discarding: bool,
    /// An unfinished telnet command, as the bytes that began it: empty outside one; `IAC`;
    /// `IAC WILL` (any of WILL, WONT, DO, DONT: the option byte is still to come); `IAC SB`
    /// (inside a subnegotiation); `IAC SB IAC` (inside one, after an IAC).
    #[serde(with = "serde_bytes")]
    pub telnet: Vec<u8>,
}

/// Where the telnet state machine is. Telnet sequences are removed from the stream before lines
/// are split, so e.g. `IAC WILL <LF>` never ends a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    Data,
    /// After IAC.
    Command,
    /// After IAC WILL/WONT/DO/DONT: one option byte follows.
    Option,
    /// Inside IAC SB, up to IAC SE.
    Subnegotiation,
    /// After IAC inside a subnegotiation.
    SubnegotiationCommand,
}

/// A per-client incremental line decoder, fed raw socket bytes.
///
/// Lines end with LF; a CR right before the LF is dropped; telnet command sequences are removed
/// (`IAC IAC` is a literal 0xFF byte). `max_line_bytes` counts a line's bytes without its CR/LF,
/// after telnet stripping. Finished items are read with [`Iterator::next`], which returns `None`
/// whenever nothing is ready and more after the next [`feed`](LineDecoder::feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDecoder {
    max_line_bytes: usize,
    /// The current line so far, when it spans several reads. Never longer than
    /// `max_line_bytes + 1`, the extra byte being a CR.
    partial: Vec<u8>,
    /// Set from the moment the current line became too long until its LF; `partial` is empty then.
    discarding: bool,
    telnet: Telnet,
    ready: VecDeque<Decoded>,
}

impl LineDecoder {
    /// A decoder at the start of a line. Allocates nothing.
    pub fn new(max_line_bytes: usize) -> Self {
        LineDecoder {
            max_line_bytes,
            partial: Vec::new(),
            discarding: false,
            telnet: Telnet::Data,
            ready: VecDeque::new(),
        }
    }

    /// Consumes `input`, queueing finished items.
    pub fn feed(&mut self, mut input: &[u8]) {
        while let Some((&byte, rest)) = input.split_first() {
            let (telnet, remaining) = match (self.telnet, byte) {
                (Telnet::Data, _) => match input.iter().position(|&b| b == b'\n' || b == IAC) {
                    None => {
                        self.push(input);
                        (Telnet::Data, &[][..])
                    }
                    Some(end) if input[end] == b'\n' => {
                        self.end_line(&input[..end]);
                        (Telnet::Data, &input[end + 1..])
                    }
                    Some(end) => {
                        self.push(&input[..end]);
                        (Telnet::Command, &input[end + 1..])
                    }
                },
                (Telnet::Command, IAC) => {
                    self.push(&[IAC]);
                    (Telnet::Data, rest)
                }
                (Telnet::Command, WILL..=DONT) => (Telnet::Option, rest),
                (Telnet::Command, SB) => (Telnet::Subnegotiation, rest),
                (Telnet::Command, SE..) => (Telnet::Data, rest),
                // Not a telnet command (a raw client sent a lone 0xFF): drop only the IAC, so a
                // following LF still ends the line.
                (Telnet::Command, _) => (Telnet::Data, input),
                (Telnet::Option, _) => (Telnet::Data, rest),
                (Telnet::Subnegotiation, _) => match input.iter().position(|&b| b == IAC) {
                    Some(iac) => (Telnet::SubnegotiationCommand, &input[iac + 1..]),
                    None => (Telnet::Subnegotiation, &[][..]),
                },
                (Telnet::SubnegotiationCommand, SE) => (Telnet::Data, rest),
                (Telnet::SubnegotiationCommand, _) => (Telnet::Subnegotiation, rest),
            };
            self.telnet = telnet;
            input = remaining;
        }
    }

    /// True when finished items are queued.
    pub fn has_pending(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Called when the client closed its side: an unfinished last line is processed as if its LF
    /// had arrived (so a trailing CR is dropped too).
    pub fn finish(&mut self) {
        let line = std::mem::take(&mut self.partial);
        if !line.is_empty() {
            self.complete(&line);
        }
        self.discarding = false;
        self.telnet = Telnet::Data;
    }

    /// Changes the limit, e.g. on reload. A partial line already over the new limit is too long.
    pub fn set_max_line_bytes(&mut self, n: usize) {
        self.max_line_bytes = n;
        if let Some(&last) = self.partial.last() {
            if self.exceeds(self.partial.len(), last) {
                self.reject();
            }
        }
    }

    /// The unfinished line so far.
    pub fn partial(&self) -> &[u8] {
        &self.partial
    }

    /// What this decoder holds, as a record to restore it from in another process.
    pub fn export(&self) -> PendingInput {
        let telnet = match self.telnet {
            Telnet::Data => &[][..],
            Telnet::Command => &[IAC][..],
            Telnet::Option => &[IAC, WILL][..],
            Telnet::Subnegotiation => &[IAC, SB][..],
            Telnet::SubnegotiationCommand => &[IAC, SB, IAC][..],
        };
        PendingInput {
            ready: self.ready.iter().cloned().collect(),
            partial: self.partial.clone(),
            discarding: self.discarding,
            telnet: telnet.to_vec(),
        }
    }

    /// A decoder that goes on from `pending` (see [`LineDecoder::export`]) with this process's
    /// limit: a partial line already over it is too long, as with
    /// [`LineDecoder::set_max_line_bytes`]. A telnet prefix not listed in [`PendingInput`] is
    /// taken as none.
    pub fn restore(pending: PendingInput, max_line_bytes: usize) -> Self {
        let telnet = match pending.telnet.as_slice() {
            [IAC] => Telnet::Command,
            [IAC, WILL..=DONT] => Telnet::Option,
            [IAC, SB] => Telnet::Subnegotiation,
            [IAC, SB, IAC] => Telnet::SubnegotiationCommand,
            _ => Telnet::Data,
        };
        let mut decoder = LineDecoder {
            max_line_bytes,
            partial: if pending.discarding { Vec::new() } else { pending.partial },
            discarding: pending.discarding,
            telnet,
            ready: pending.ready.into(),
        };
        decoder.set_max_line_bytes(max_line_bytes);
        decoder
    }

    /// Bytes of unfinished line held, at most `max_line_bytes + 1`.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len()
    }

    /// Appends data bytes (telnet already removed) to the current line, or discards them.
    fn push(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        if self.discarding {
            return;
        }
        if self.exceeds(self.partial.len() + bytes.len(), last) {
            self.reject();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    /// Whether a line whose first `len` bytes end with `last` is already too long. One byte over
    /// the limit is still fine if it is a CR: it may be the CR of CR LF, which does not count.
    fn exceeds(&self, len: usize, last: u8) -> bool {
        len > self.max_line_bytes && (len - self.max_line_bytes > 1 || last != b'\r')
    }

    /// Reports the current line as too long, once, and discards it up to its LF.
    fn reject(&mut self) {
        self.ready.push_back(Decoded::TooLong);
        self.discarding = true;
        self.partial = Vec::new();
    }

    /// Handles an LF; `run` is the data between what was already taken in and the LF.
    fn end_line(&mut self, run: &[u8]) {
        if self.partial.is_empty() {
            if !self.discarding {
                self.complete(run);
            }
        } else {
            self.push(run);
            let mut line = std::mem::take(&mut self.partial);
            if !self.discarding {
                self.complete(&line);
            }
            if line.capacity() <= KEEP_PARTIAL {
                line.clear();
                self.partial = line;
            }
        }
        self.discarding = false;
    }

    /// Queues a whole line, given without its LF.
    fn complete(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line_bytes {
            self.ready.push_back(Decoded::TooLong);
        } else {
            let text = sanitize(line);
            if !is_blank(&text) {
                self.ready.push_back(Decoded::Line(text));
            }
        }
    }
}

impl Iterator for LineDecoder {
    type Item = Decoded;

    /// The next finished item, in order.
    fn next(&mut self) -> Option<Decoded> {
        let item = self.ready.pop_front();
        if self.ready.is_empty() && self.ready.capacity() > KEEP_READY {
            self.ready = VecDeque::new();
        }
        item
    }
}

#[cfg(test)]
mod tests;
