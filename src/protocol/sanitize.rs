//! Removing from a client's line everything that could act on another client's terminal.
//!
//! Every line is relayed to everyone in the room, many of them on real terminals (telnet, `nc`),
//! so it must carry nothing a terminal would interpret: C0 controls (TAB is kept), DEL, C1
//! controls, and ANSI escape sequences. Sequences are removed whole, so `ESC [31m` leaves nothing
//! behind rather than a stray `[31m`, and the 8-bit introducers (U+009B CSI, U+009D OSC, …) are
//! treated like their `ESC` forms because some terminals honour them.
//!
//! The bidi overrides and isolates (U+202A–U+202E, U+2066–U+2069) are removed too: they reorder
//! everything after them up to the end of the displayed line, so a message could show text other
//! than what it says, or reverse the parts the server prints after `{text}`. The plain marks
//! LRM, RLM and ALM are kept: they only affect neutral characters next to them and are needed by
//! right-to-left writers.
//!
//! Nearly every line is plain text, so a first pass only checks whether anything needs removing;
//! a clean line costs one scan, one UTF-8 validation and one copy.

const ESC: char = '\u{1b}';

/// Returns `raw` as text that is safe to show on any terminal: invalid UTF-8 becomes U+FFFD,
/// then controls, escape sequences and bidi overrides are removed (see the module doc).
pub fn sanitize(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) if is_clean(raw) => text.to_owned(),
        _ => strip(&String::from_utf8_lossy(raw)),
    }
}

/// True for a line that says nothing: empty or only (Unicode) whitespace. Such lines are ignored.
pub fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Whether `bytes` contains nothing that `strip` would remove, judged on the UTF-8 encoding so
/// the common case never decodes characters.
fn is_clean(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\t' => true,
        0x00..=0x1f | 0x7f => false,
        // C1 controls U+0080–U+009F are encoded as C2 80 – C2 9F.
        0xc2 => !matches!(bytes.get(i + 1), Some(0x80..=0x9f)),
        // Bidi overrides and isolates are encoded as E2 80 AA–AE and E2 81 A6–A9.
        0xe2 => !matches!(bytes.get(i + 1..i + 3), Some([0x80, 0xaa..=0xae] | [0x81, 0xa6..=0xa9])),
        _ => true,
    })
}

fn is_removed(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Where `strip` is in an escape sequence.
#[derive(Clone, Copy)]
enum State {
    Text,
    /// After `ESC`.
    Escape,
    /// After `ESC` and intermediates (0x20–0x2F) such as `ESC (`: one final character follows.
    EscapeIntermediate,
    /// In a control sequence, up to its final character 0x40–0x7E.
    Csi,
    /// In an operating system command, up to BEL or ST.
    Osc,
    /// In a DCS, SOS, PM or APC string, up to ST.
    ControlString,
}

/// The slow path: removes sequences with a small state machine modelled on what terminals do
/// (xterm, ECMA-48). An `ESC` anywhere starts a new sequence, which makes `ESC \` (ST) end a
/// string; other controls inside a sequence are dropped without ending it; a character that
/// cannot belong to the sequence ends it and is kept. A sequence still open at the end of the
/// line is removed up to there.
fn strip(text: &str) -> String {
    use State::*;
    let mut out = String::with_capacity(text.len());
    let mut state = Text;
    for c in text.chars() {
        state = match (state, c) {
            (_, ESC) => Escape,
            (_, '\u{9b}') => Csi,
            (_, '\u{9d}') => Osc,
            (_, '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}') => ControlString,
            (_, '\u{9c}') | (Osc, '\u{7}') => Text,
            (Escape, '[') => Csi,
            (Escape, ']') => Osc,
            (Escape, 'P' | 'X' | '^' | '_') => ControlString,
            (Escape | EscapeIntermediate, ' '..='/') => EscapeIntermediate,
            (Escape | EscapeIntermediate, '0'..='~') | (Csi, '@'..='~') => Text,
            (Csi, ' '..='?') | (Osc | ControlString, _) => state,
            (_, c) if is_removed(c) => state,
            (_, c) => {
                out.push(c);
                Text
            }
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(raw: &[u8]) -> String {
        sanitize(raw)
    }

    #[test]
    fn clean_text_is_unchanged() {
        assert_eq!(s(b"hello, world"), "hello, world");
        assert_eq!(
            s("tab\there, caf\u{e9} \u{2019}quoted\u{2019} \u{1f600} \u{5d0}".as_bytes()),
            "tab\there, caf\u{e9} \u{2019}quoted\u{2019} \u{1f600} \u{5d0}"
        );
        assert_eq!(s("\u{a9}\u{a0}\u{200f}".as_bytes()), "\u{a9}\u{a0}\u{200f}");
        assert_eq!(s(b""), "");
    }

    #[test]
    fn invalid_utf8_becomes_replacement_character() {
        assert_eq!(s(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s(b"\xe2\x80"), "\u{fffd}");
    }

    #[test]
    fn controls_are_removed() {
        assert_eq!(s(b"a\x00b\x07c\x08d\re\x7ff\x1fg"), "abcdefg");
        assert_eq!(s("a\u{80}b\u{85}c\u{9c}d\u{9f}".as_bytes()), "abcd");
    }

    #[test]
    fn key_example() {
        assert_eq!(s(b"\x1b[2J\x1b[31mred\x07"), "red");
    }

    #[test]
    fn csi_sequences_are_removed_whole() {
        assert_eq!(s(b"a\x1b[1;31mb\x1b[0mc"), "abc");
        assert_eq!(s(b"\x1b[?1049h\x1b[H!"), "!");
        assert_eq!(s(b"a\x1b[ q"), "a");
        assert_eq!(s(b"a\x1b[12"), "a");
        assert_eq!(s("\u{9b}31mred".as_bytes()), "red");
        assert_eq!(s("x\u{9b}2Jy".as_bytes()), "xy");
    }

    #[test]
    fn strings_are_removed_up_to_their_terminator() {
        assert_eq!(s(b"a\x1b]0;title\x07b"), "ab");
        assert_eq!(s(b"a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\b"), "alinkb");
        assert_eq!(s(b"a\x1b]0;no end"), "a");
        assert_eq!(s(b"a\x1bPq#0;2;0;0;0\x07still dcs\x1b\\b"), "ab");
        assert_eq!(s(b"a\x1b_apc\x1b\\b\x1bXsos\x1b\\c\x1b^pm\x1b\\d"), "abcd");
        assert_eq!(s("a\u{9d}0;t\u{9c}b\u{90}dcs\u{9c}c".as_bytes()), "abc");
    }

    #[test]
    fn short_escapes_are_removed_whole() {
        assert_eq!(s(b"a\x1bcb\x1b7c\x1b8d\x1b=e"), "abcde");
        assert_eq!(s(b"a\x1b(0b\x1b)Bc\x1b#8d"), "abcd");
        assert_eq!(s(b"a\x1b"), "a");
        assert_eq!(s(b"a\x1b\x1b[31mb"), "ab");
        assert_eq!(s("a\x1b\u{e9}".as_bytes()), "a\u{e9}");
    }

    #[test]
    fn bidi_overrides_are_removed() {
        assert_eq!(s("a\u{202e}b\u{202c}c\u{2066}d\u{2069}".as_bytes()), "abcd");
        assert_eq!(s("\u{200e}\u{200f}\u{61c}".as_bytes()), "\u{200e}\u{200f}\u{61c}");
    }

    #[test]
    fn blank() {
        assert!(is_blank(""));
        assert!(is_blank(" \t \u{a0}\u{3000}"));
        assert!(!is_blank(" x "));
        assert!(is_blank(&s(b" \x1b[31m \x07")));
    }

    fn is_safe(c: char) -> bool {
        c == '\t'
            || !(c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    }

    /// Bytes rich in the characters the state machine cares about.
    fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            4 => b' '..=b'~',
            2 => Just(0x1b),
            1 => prop::sample::select(&b"[]PX^_\\(#\x07\r\n\t"[..]),
            1 => Just(0xc2),
            1 => 0x80..=0x9fu8,
            1 => Just(0xe2),
        ];
        prop::collection::vec(byte, 0..64)
    }

    proptest! {
        #[test]
        fn output_is_safe(raw in interesting_bytes()) {
            let out = sanitize(&raw);
            prop_assert!(out.chars().all(is_safe), "{out:?}");
        }

        #[test]
        fn idempotent(raw in interesting_bytes()) {
            let once = sanitize(&raw);
            prop_assert_eq!(sanitize(once.as_bytes()), once);
        }

        #[test]
        fn output_is_safe_for_any_string(text in any::<String>()) {
            let out = sanitize(text.as_bytes());
            prop_assert!(out.chars().all(is_safe), "{out:?}");
        }

        #[test]
        fn fast_path_agrees_with_slow_path(text in any::<String>()) {
            prop_assert_eq!(sanitize(text.as_bytes()), strip(&text));
        }
    }
}
