//! Input handling and sanitising: line endings, telnet negotiation, invalid UTF-8 and blank
//! lines on the way in; no control byte or escape sequence ever reaching another client.

use crate::common::*;
use crate::room::{Room, expect_timed, room_server};

#[test]
fn input_line_endings_telnet_utf8_and_blank_lines() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    // (raw bytes sent by a, the texts everyone must then see, in order)
    let cases: &[(&[u8], &[&str])] = &[
        (b"crlf line\r\n", &["crlf line"]),
        (b"lf line\n", &["lf line"]),
        (b"one\ntwo\r\nthree\n", &["one", "two", "three"]),
        (b"\xff\xfb\x01hi\xff\xfd\x03\r\n", &["hi"]),
        // Telnet subnegotiation, then IAC IAC (a literal 0xFF byte, invalid UTF-8).
        (b"\xff\xfa\x18\x00xterm\xff\xf0sub\r\n", &["sub"]),
        (b"a\xff\xffb\n", &["a\u{FFFD}b"]),
        (b"caf\xe9 au lait\n", &["caf\u{FFFD} au lait"]),
        (b"half \xe6\x97\n", &["half \u{FFFD}"]),
        // Blank lines: no output at all.
        (b"\r\n\n   \r\n\t\t\n \t \n", &[]),
        // A line that is empty once sanitised is ignored too.
        (b"\x1b[2J\x07\r\n", &[]),
        (b"a\rb\n", &["ab"]),
        (b"end\n", &["end"]),
    ];
    for (raw, texts) in cases {
        room.clients[a].send_raw(raw).unwrap();
        for t in *texts {
            room.expect_chat_all(a, t);
        }
    }
    // A line in pieces over several writes.
    for piece in [&b"spl"[..], b"it li", b"ne\r", b"\n"] {
        room.clients[a].send_raw(piece).unwrap();
        std::thread::yield_now();
    }
    room.expect_chat_all(a, "split line");
    // b saw nothing else: its next line is this.
    room.sync(b, "done");
}

/// Bytes that must never reach a client: C0 controls but TAB (and CR/LF outside line ends),
/// DEL, C1 controls (UTF-8 C2 80–9F).
fn assert_terminal_safe(who: &str, lines: &[String]) {
    for l in lines {
        let b = l.as_bytes();
        for (i, &x) in b.iter().enumerate() {
            assert!(
                x == b'\t' || (x >= 0x20 && x != 0x7f),
                "{who}: control byte {x:#04x} in line {l:?}"
            );
            if x == 0xc2 {
                assert!(
                    !matches!(b.get(i + 1), Some(0x80..=0x9f)),
                    "{who}: C1 control in line {l:?}"
                );
            }
        }
    }
}

#[test]
fn escape_injection_never_reaches_others() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 3);
    let (a, b) = room.cross_pair(&server);
    let nick_a = room.nicks[a].clone();
    let nick_b = room.nicks[b].clone();
    let chats: &[(&[u8], &str)] = &[
        (b"\x1b[2J\x1b[31mred\x07", "red"),
        (b"\xc2\x9b31mX", "X"),
        (b"\x1b]0;pwned\x07title", "title"),
        (b"\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\", "link"),
        (b"\xc2\x9d0;osc8bit\x07ok", "ok"),
        (b"bell\x07\x07 ring", "bell ring"),
        (b"del\x7fete", "delete"),
        (b"\x00nul\x01\x02\x08back", "nulback"),
        (b"c1 \xc2\x85\xc2\x80 nel", "c1  nel"),
        (b"\x1bc reset", " reset"),
        (b"\x1b(0box\x1b(B", "box"),
        (b"\x1bP1$r\x1b\\dcs", "dcs"),
        (b"trailing\x1b", "trailing"),
        (b"\x1b[?1049h\x1b[1;1H\x1b[Kalt", "alt"),
        (b"tab\tkept", "tab\tkept"),
        // A raw 0x9b byte is not UTF-8: it becomes U+FFFD, harmless.
        (b"\x9b2J raw", "\u{FFFD}2J raw"),
    ];
    for (raw, text) in chats {
        let mut line = raw.to_vec();
        line.extend_from_slice(b"\r\n");
        room.clients[a].send_raw(&line).unwrap();
        room.expect_chat_all(a, text);
    }
    // Commands carry text too.
    room.clients[a].send_raw(b"/me \x1b[5mblinks\x1b[0m\x07\n").unwrap();
    room.expect_timed_all(&format!("* {nick_a} blinks"));
    room.clients[a].send_raw(format!("/msg {nick_b} \x1b[31mpssst\x07\n").as_bytes()).unwrap();
    expect_timed(&mut room.clients[b], &format!("[pm from {nick_a}] pssst"));
    expect_timed(&mut room.clients[a], &format!("[pm to {nick_b}] pssst"));
    room.clients[a].send_raw(b"/quit \x1b[2Jbye\x07\n").unwrap();
    let (a_lines, end) = {
        let ca = &mut room.clients[a];
        ca.read_to_close(LINE_TIMEOUT)
    };
    assert!(matches!(end, ReadError::Eof), "quitter: {end}");
    assert!(a_lines.is_empty(), "quitter read {a_lines:?}");
    for (i, c) in room.clients.iter_mut().enumerate() {
        if i != a {
            c.expect_line(&format!("* {nick_a} left (quit: bye)"));
        }
    }
    for c in &room.clients {
        assert_terminal_safe(c.label(), c.transcript());
    }
}

/// Hostile bytes, one line each, and the exact text the room then sees (`None`: nothing, the
/// line is empty once sanitised). A telnet client's negotiation, terminal escapes in their 7- and
/// 8-bit forms, bidi tricks, every kind of invalid UTF-8, and raw control bytes.
const HOSTILE: &[(&[u8], Option<&str>)] = &[
    // Telnet: WILL/DO, a subnegotiation (NAWS) with NUL inside, IAC IAC, a bare command.
    (b"\xff\xfb\x18hi", Some("hi")),
    (b"\xff\xfd\x01\xff\xfb\x03x", Some("x")),
    (b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0naws", Some("naws")),
    (b"a\xff\xffb", Some("a\u{FFFD}b")),
    (b"\xff\xf4int", Some("int")),
    // ANSI: SGR, private modes, truecolour, screen clearing alone (nothing left), charsets.
    (b"\x1b[31mred\x1b[0m", Some("red")),
    (b"\x1b[?25lhidden\x1b[?1049h", Some("hidden")),
    (b"\x1b[38;2;255;0;0mtruecolor", Some("truecolor")),
    (b"\x1b[2J\x1b[H", None),
    (b"\x1b(0lqk\x1b(B", Some("lqk")),
    // OSC (title, clipboard), DCS (sixel), each with BEL or ST.
    (b"\x1b]0;title\x07x", Some("x")),
    (b"\x1b]52;c;ZXZpbA==\x1b\\clip", Some("clip")),
    (b"\x1bPq#0;2;0;0;0\x1b\\sixel", Some("sixel")),
    // C1 controls as UTF-8: 8-bit CSI, OSC ... ST, NEL, RI.
    (b"\xc2\x9b2Jc1csi", Some("c1csi")),
    (b"\xc2\x9d8;;x\xc2\x9clink", Some("link")),
    (b"\xc2\x85nel\xc2\x8dri", Some("nelri")),
    // Bidi overrides and isolates go; the marks right-to-left writers need stay.
    (b"bidi \xe2\x80\xaeevil\xe2\x80\xac", Some("bidi evil")),
    (b"\xe2\x81\xa6iso\xe2\x81\xa9late", Some("isolate")),
    (b"\xe2\x80\xaa\xe2\x80\xab\xe2\x80\xadLRE", Some("LRE")),
    (b"rlm \xe2\x80\x8f kept", Some("rlm \u{200f} kept")),
    // Invalid UTF-8: a Latin-1 byte, an overlong `/`, a surrogate, 5-byte and out-of-range forms.
    (b"caf\xe9", Some("caf\u{FFFD}")),
    (b"\xc0\xafoverlong", Some("\u{FFFD}\u{FFFD}overlong")),
    (b"\xed\xa0\x80surrogate", Some("\u{FFFD}\u{FFFD}\u{FFFD}surrogate")),
    (b"\xf8\x88\x80\x80\x80five", Some("\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}five")),
    (b"\xf4\x90\x80\x80big", Some("\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}big")),
    // Raw C0 controls and DEL; a CR inside a line.
    (b"nul\x00in\x00side", Some("nulinside")),
    (b"\x7fdel\x7f", Some("del")),
    (b"bs\x08\x08\x08xyz", Some("bsxyz")),
    (b"\x0e\x0fshift\x1a", Some("shift")),
    (b"cr\rin the middle", Some("crin the middle")),
    // What is harmless stays as typed: tabs, zero-width space, a slash escaped with `//`.
    (b"\t\ttabs\t", Some("\t\ttabs\t")),
    (b"zero\xe2\x80\x8bwidth", Some("zero\u{200b}width")),
    (b"//\x1b[1mslash", Some("/slash")),
];

#[test]
fn hostile_bytes_reach_the_room_sanitised() {
    let server = room_server(3).start();
    let mut room = Room::spread(&server, 2);
    let (a, b) = room.cross_pair(&server);
    for (raw, text) in HOSTILE {
        let mut line = raw.to_vec();
        line.push(b'\n');
        room.clients[a].send_raw(&line).unwrap();
        // The next line everyone reads is this one's, so a line that should vanish and did not
        // fails at the next case.
        if let Some(text) = text {
            room.expect_chat_all(a, text);
        }
    }
    room.sync(b, "after the hostile lines");
    for c in &room.clients {
        assert_terminal_safe(c.label(), c.transcript());
    }
}
