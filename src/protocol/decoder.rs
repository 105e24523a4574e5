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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(s: &str) -> Decoded {
        Decoded::Line(s.to_string())
    }

    /// Feeds the chunks, then finishes, and returns everything decoded.
    fn decode(max: usize, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut decoder = LineDecoder::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk);
            out.extend(&mut decoder);
        }
        decoder.finish();
        out.extend(&mut decoder);
        out
    }

    #[test]
    fn new_allocates_nothing() {
        let decoder = LineDecoder::new(1024);
        assert_eq!(decoder.partial.capacity(), 0);
        assert_eq!(decoder.ready.capacity(), 0);
        assert!(!decoder.has_pending());
    }

    #[test]
    fn splits_lines_and_drops_cr_before_lf() {
        assert_eq!(
            decode(100, &[b"one\r\ntwo\nthree\r\n"]),
            [line("one"), line("two"), line("three")]
        );
        assert_eq!(decode(100, &[b"a\rb\n"]), [line("ab")]);
    }

    #[test]
    fn lines_split_across_feeds() {
        assert_eq!(
            decode(100, &[b"he", b"llo\r", b"\nwor", b"ld\n"]),
            [line("hello"), line("world")]
        );
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(decode(100, &[b"\n\r\n  \t\n\x1b[2J\n\x07\nx\n"]), [line("x")]);
    }

    #[test]
    fn lines_are_sanitized() {
        assert_eq!(decode(100, &[b"\x1b[2J\x1b[31mred\x07\n"]), [line("red")]);
        assert_eq!(decode(100, &[b"caf\xe9\n"]), [line("caf\u{fffd}")]);
    }

    #[test]
    fn unfinished_last_line_is_processed_on_finish() {
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"bye");
        assert!(!decoder.has_pending());
        assert_eq!(decoder.buffered_bytes(), 3);
        decoder.finish();
        assert!(decoder.has_pending());
        assert_eq!(decoder.next(), Some(line("bye")));
        assert_eq!(decoder.next(), None);
        assert_eq!(decode(5, &[b"12345\r"]), [line("12345")]);
        assert_eq!(decode(5, &[b"  "]), []);
    }

    #[test]
    fn telnet_commands_are_stripped() {
        // IAC DO ECHO, IAC WILL SGA, IAC NOP, IAC GA.
        assert_eq!(
            decode(100, &[b"\xff\xfd\x01hi\xff\xfb\x03 th\xff\xf1ere\xff\xf9\n"]),
            [line("hi there")]
        );
        // NAWS 80x10: the 10 is an LF byte, but inside a subnegotiation.
        assert_eq!(decode(100, &[b"a\xff\xfa\x1f\x00\x50\x00\x0a\xff\xf0b\n"]), [line("ab")]);
        // An escaped IAC inside a subnegotiation does not end it.
        assert_eq!(decode(100, &[b"a\xff\xfa\x18\xff\xff\xff\xf0b\n"]), [line("ab")]);
        // An option byte that happens to be LF.
        assert_eq!(decode(100, &[b"a\xff\xfb\nb\n"]), [line("ab")]);
    }

    #[test]
    fn escaped_iac_is_a_data_byte() {
        assert_eq!(decode(100, &[b"a\xff\xffb\n"]), [line("a\u{fffd}b")]);
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"a\xff\xff");
        assert_eq!(decoder.buffered_bytes(), 2);
    }

    #[test]
    fn lone_iac_before_lf_does_not_swallow_the_lf() {
        assert_eq!(decode(100, &[b"a\xff\nb\n"]), [line("a"), line("b")]);
        assert_eq!(decode(100, &[b"a\xffxb\n"]), [line("axb")]);
    }

    #[test]
    fn telnet_sequences_split_across_feeds() {
        let input: &[u8] = b"x\xff\xfa\x18\x00ANSI\xff\xf0y\xff\xfd\x01z\xff\xff\n";
        for split in 0..input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(decode(100, &[a, b]), [line("xyz\u{fffd}")], "split at {split}");
        }
    }

    #[test]
    fn cr_iac_lf_still_drops_the_cr() {
        let mut decoder = LineDecoder::new(3);
        decoder.feed(b"abc\r\xff\xf1\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [line("abc")]);
    }

    #[test]
    fn exactly_max_line_bytes_is_fine() {
        assert_eq!(decode(5, &[b"12345\n"]), [line("12345")]);
        assert_eq!(decode(5, &[b"12345\r\n"]), [line("12345")]);
        assert_eq!(decode(5, &[b"12345\r", b"\n"]), [line("12345")]);
        assert_eq!(decode(5, &[b"123", b"45\r", b"\n"]), [line("12345")]);
        assert_eq!(decode(5, &[b"12", b"345", b"\r\n"]), [line("12345")]);
    }

    #[test]
    fn one_byte_more_is_too_long() {
        assert_eq!(decode(5, &[b"123456\nok\n"]), [Decoded::TooLong, line("ok")]);
        assert_eq!(decode(5, &[b"123", b"456\n", b"ok\n"]), [Decoded::TooLong, line("ok")]);
        assert_eq!(decode(5, &[b"12345\r6\nok\n"]), [Decoded::TooLong, line("ok")]);
        assert_eq!(decode(5, &[b"12345\r", b"\r\nok\n"]), [Decoded::TooLong, line("ok")]);
        assert_eq!(decode(5, &[b"123", b"45\r", b"x\nok\n"]), [Decoded::TooLong, line("ok")]);
        assert_eq!(decode(5, &[b"123456"]), [Decoded::TooLong]);
    }

    #[test]
    fn too_long_is_reported_early_and_once() {
        let mut decoder = LineDecoder::new(1024);
        let chunk = [b'x'; 64 * 1024];
        decoder.feed(&chunk[..1000]);
        assert!(!decoder.has_pending());
        decoder.feed(&chunk[..100]);
        assert_eq!(decoder.next(), Some(Decoded::TooLong));
        assert_eq!(decoder.buffered_bytes(), 0);
        for _ in 0..160 {
            decoder.feed(&chunk);
            assert!(!decoder.has_pending());
            assert_eq!(decoder.buffered_bytes(), 0);
            assert_eq!(decoder.partial.capacity(), 0);
        }
        decoder.feed(b"tail\nnext\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [line("next")]);
    }

    #[test]
    fn buffer_is_released_after_a_long_split_line() {
        let mut decoder = LineDecoder::new(4096);
        decoder.feed(&[b'x'; 3000]);
        decoder.feed(b"\n");
        assert_eq!(decoder.partial.capacity(), 0);
        decoder.feed(b"x");
        decoder.feed(b"\n");
        assert!(decoder.partial.capacity() <= KEEP_PARTIAL);
    }

    #[test]
    fn queue_is_released_when_drained() {
        let mut decoder = LineDecoder::new(100);
        decoder.feed(&b"a\n".repeat(1000));
        assert_eq!(decoder.by_ref().count(), 1000);
        assert_eq!(decoder.ready.capacity(), 0);
    }

    #[test]
    fn lowering_the_limit_rejects_a_long_partial_line() {
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"0123456789");
        decoder.set_max_line_bytes(20);
        assert!(!decoder.has_pending());
        decoder.set_max_line_bytes(5);
        decoder.feed(b"more\nok\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [Decoded::TooLong, line("ok")]);
    }

    /// Exports `decoder`, sends the record through postcard (as the hand-off does) and
    /// restores it with `max`.
    fn moved(decoder: &LineDecoder, max: usize) -> LineDecoder {
        let bytes = postcard::to_allocvec(&decoder.export()).unwrap();
        LineDecoder::restore(postcard::from_bytes(&bytes).unwrap(), max)
    }

    /// Feeds `before`, moves the decoder, feeds `after` and finishes: what comes out.
    fn decode_moved(max: usize, before: &[u8], after: &[u8]) -> Vec<Decoded> {
        let mut decoder = LineDecoder::new(max);
        decoder.feed(before);
        let mut decoder = moved(&decoder, max);
        decoder.feed(after);
        decoder.finish();
        decoder.collect()
    }

    #[test]
    fn a_restored_decoder_is_the_same_decoder() {
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"first\nhal\xff\xfa\x18");
        assert_eq!(moved(&decoder, 100), decoder);
        let mut decoder = LineDecoder::new(5);
        decoder.feed(b"123456");
        assert_eq!(moved(&decoder, 5), decoder);
        assert_eq!(moved(&LineDecoder::new(7), 7), LineDecoder::new(7));
    }

    #[test]
    fn a_line_goes_on_after_a_move() {
        // Unprocessed lines and the partial one, mid-line and right after a CR.
        assert_eq!(decode_moved(100, b"first\nhal", b"f\n"), [line("first"), line("half")]);
        assert_eq!(decode_moved(5, b"12345\r", b"\n"), [line("12345")]);
        assert_eq!(decode_moved(5, b"12345\r", b"\r\nok\n"), [Decoded::TooLong, line("ok")]);
        // In the middle of a UTF-8 sequence: the character arrives whole.
        assert_eq!(decode_moved(100, b"caf\xc3", b"\xa9\n"), [line("caf\u{e9}")]);
        assert_eq!(decode_moved(100, b"\xe2\x82", b"\xac!\n"), [line("\u{20ac}!")]);
    }

    #[test]
    fn a_telnet_command_goes_on_after_a_move() {
        let input: &[u8] = b"a\xff\xfa\x18\x00\n\xff\xff\xff\xf0b\xff\xfb\nc\xff\xf1d\xff\xff\n";
        for cut in 0..=input.len() {
            let (before, after) = input.split_at(cut);
            assert_eq!(decode_moved(100, before, after), [line("abcd\u{fffd}")], "cut at {cut}");
        }
    }

    #[test]
    fn an_over_long_line_is_still_discarded_after_a_move() {
        let mut decoder = LineDecoder::new(5);
        decoder.feed(b"1234567");
        let pending = decoder.export();
        assert!(pending.discarding && pending.partial.is_empty());
        assert_eq!(pending.ready, [Decoded::TooLong]);
        assert_eq!(decode_moved(5, b"1234567", b"89\nok\n"), [Decoded::TooLong, line("ok")]);
        // Its TooLong already taken: only the rest is dropped.
        decoder.next();
        let mut decoder = moved(&decoder, 5);
        decoder.feed(b"89\nok\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [line("ok")]);
    }

    #[test]
    fn a_lower_limit_after_a_move_rejects_a_long_partial_line() {
        assert_eq!(decode_moved(100, b"0123456789", b"\nok\n"), [line("0123456789"), line("ok")]);
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"0123456789");
        let mut decoder = moved(&decoder, 5);
        decoder.feed(b"more\nok\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [Decoded::TooLong, line("ok")]);
    }

    #[test]
    fn a_record_names_no_internal_state() {
        let mut decoder = LineDecoder::new(100);
        decoder.feed(b"one\ntw\xff\xfb");
        assert_eq!(
            decoder.export(),
            PendingInput {
                ready: vec![line("one")],
                partial: b"tw".to_vec(),
                discarding: false,
                telnet: vec![IAC, WILL],
            }
        );
        // A telnet prefix the record does not know is none.
        let pending = PendingInput { telnet: vec![IAC, b'x'], ..PendingInput::default() };
        let mut decoder = LineDecoder::restore(pending, 100);
        decoder.feed(b"x\n");
        assert_eq!(decoder.collect::<Vec<_>>(), [line("x")]);
    }

    /// The spec written as simply as possible: strip telnet from the whole input, split on LF,
    /// judge each line (the unfinished last one as if an LF followed).
    fn reference(max: usize, input: &[u8]) -> Vec<Decoded> {
        let mut data = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match (input[i], input.get(i + 1)) {
                (IAC, Some(&IAC)) => {
                    data.push(IAC);
                    i += 2;
                }
                (IAC, Some(WILL..=DONT)) => i += 3,
                (IAC, Some(&SB)) => {
                    i += 2;
                    while i < input.len() && !(input[i] == IAC && input.get(i + 1) == Some(&SE)) {
                        i += if input[i] == IAC { 2 } else { 1 };
                    }
                    i += 2;
                }
                (IAC, Some(SE..)) => i += 2,
                (IAC, _) => i += 1,
                (b, _) => {
                    data.push(b);
                    i += 1;
                }
            }
        }
        let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut out = Vec::new();
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max {
                out.push(Decoded::TooLong);
            } else if !is_blank(&sanitize(line)) {
                out.push(Decoded::Line(sanitize(line)));
            }
        }
        out
    }

    /// Input rich in what the decoder cares about.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => any::<u8>(),
            6 => b'a'..=b'e',
            2 => Just(b'\n'),
            2 => Just(b'\r'),
            2 => Just(IAC),
            1 => prop::sample::select(&[SE, SB, WILL, DONT, 241, 0x1b, b' '][..]),
        ];
        prop::collection::vec(byte, 0..200)
    }

    /// Splits `input` at the given points.
    fn chunks(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        let mut start = 0;
        cuts.iter()
            .map(|&end| {
                let chunk = input[start..end].to_vec();
                start = end;
                chunk
            })
            .collect()
    }

    fn is_safe(c: char) -> bool {
        c == '\t' || !(c.is_control() || c == '\u{1b}')
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(
            input in input(),
            max in 0..24usize,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let chunks = chunks(&input, &cuts);
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let whole = decode(max, &[&input]);
            prop_assert_eq!(decode(max, &chunks), whole.clone());
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(decode(max, &bytes), whole);
        }

        #[test]
        fn a_move_anywhere_changes_nothing(
            input in input(),
            max in 0..24usize,
            cut in any::<prop::sample::Index>(),
        ) {
            let (before, after) = input.split_at(cut.index(input.len() + 1));
            prop_assert_eq!(decode_moved(max, before, after), decode(max, &[&input]));
        }

        #[test]
        fn matches_the_reference(input in input(), max in 0..24usize) {
            prop_assert_eq!(decode(max, &[&input]), reference(max, &input));
        }

        #[test]
        fn output_lines_are_safe_and_bounded(input in input(), max in 0..24usize) {
            let out = decode(max, &[&input]);
            let lfs = input.iter().filter(|&&b| b == b'\n').count();
            prop_assert!(out.len() <= lfs + 1);
            for item in out {
                if let Decoded::Line(text) = item {
                    prop_assert!(!is_blank(&text));
                    prop_assert!(text.chars().all(is_safe), "{text:?}");
                    prop_assert!(text.chars().count() <= max);
                }
            }
        }

        #[test]
        fn buffer_stays_bounded(
            input in input(),
            max in 0..24usize,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut decoder = LineDecoder::new(max);
            for chunk in chunks(&input, &cuts) {
                decoder.feed(&chunk);
                prop_assert!(decoder.buffered_bytes() <= max + 1);
            }
        }

        #[test]
        fn printable_ascii_lines_pass_through(
            lines in prop::collection::vec("[ -~]{0,30}", 0..10),
            crlf in prop::collection::vec(any::<bool>(), 10),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut input = Vec::new();
            for (line, crlf) in lines.iter().zip(&crlf) {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
            }
            let (a, b) = input.split_at(cut.index(input.len() + 1));
            let expected: Vec<Decoded> =
                lines.iter().filter(|l| !is_blank(l)).map(|l| line(l)).collect();
            prop_assert_eq!(decode(30, &[a, b]), expected);
        }
    }
}
