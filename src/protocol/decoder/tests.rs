//! The decoder against hand-written cases, a simple reference implementation, and moves to
//! another process at any point of the input.

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
    assert_eq!(decode(100, &[b"one\r\ntwo\nthree\r\n"]), [line("one"), line("two"), line("three")]);
    assert_eq!(decode(100, &[b"a\rb\n"]), [line("ab")]);
}

#[test]
fn lines_split_across_feeds() {
    assert_eq!(decode(100, &[b"he", b"llo\r", b"\nwor", b"ld\n"]), [line("hello"), line("world")]);
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
