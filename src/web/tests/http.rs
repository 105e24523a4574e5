use tungstenite::handshake::derive_accept_key;

use crate::web::{Answer, HttpOpening, Opening, WebLimits};

/// The answer to `request` in one read, as text, and how the opening ended.
fn ask(request: &[u8]) -> (Opening, String) {
    let mut out = Vec::new();
    let opening = HttpOpening::new(WebLimits::default()).advance(request, &mut out);
    (opening, String::from_utf8(out).unwrap())
}

fn status(request: &str) -> u16 {
    match ask(request.as_bytes()) {
        (Opening::Answered(Answer { status, .. }), out) => {
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
            assert!(out.contains("\r\nCache-Control: no-store\r\n"), "{out}");
            status
        }
        (Opening::Upgraded { .. }, _) => 101,
        (Opening::NeedInput(_), _) => 0,
    }
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").unwrap().1
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split_once("\r\n\r\n").unwrap().0;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: chat.example:8080\r\nUpgrade: websocket\r\n\
    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nOrigin: http://chat.example:8080\r\n\r\n";

#[test]
fn the_accept_key_is_rfc_6455s_example() {
    assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let request = [UPGRADE.as_bytes(), b"\x81\x80"].concat();
    let (opening, out) = ask(&request);
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    let Opening::Upgraded { rest, .. } = opening else {
        panic!("not upgraded");
    };
    assert_eq!(rest, b"\x81\x80", "the bytes after the request are the first frames");
}

#[test]
fn the_page_is_served_with_a_policy_naming_its_own_style_and_script() {
    let (_, out) = ask(b"GET /?from=bookmark HTTP/1.1\r\nHost: chat.example:8080\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(header(&out, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&out, "cache-control"), Some("no-store"));
    assert_eq!(header(&out, "connection"), Some("close"));
    let page = body(&out);
    assert_eq!(header(&out, "content-length"), Some(page.len().to_string().as_str()));
    assert!(page.starts_with("<!doctype html>") && page.contains("<title>chatd</title>"));
    let policy = header(&out, "content-security-policy").unwrap();
    assert!(policy.starts_with("default-src 'none'; style-src 'sha256-"), "{policy}");
    assert!(policy.ends_with("connect-src 'self' ws://chat.example:8080 wss://chat.example:8080"));
    assert!(!policy.contains("unsafe"), "{policy}");
    // The hashes are those of what is inline: no markup inside style or script ends it early.
    for (open, close) in [("<style>", "</style>"), ("<script>", "</script>")] {
        let inline = page.split_once(open).unwrap().1.split_once(close).unwrap().0;
        assert!(inline.len() > 100);
        let hash = ring::digest::digest(&ring::digest::SHA256, inline.as_bytes());
        let source = format!("'sha256-{}'", data_encoding::BASE64.encode(hash.as_ref()));
        assert!(policy.contains(&source), "{open} not in the policy");
        assert_eq!(page.matches(open).count(), 1);
    }
    // Text reaches the room as text: the script never parses markup.
    assert!(!page.contains("innerHTML") && !page.contains("insertAdjacentHTML"));
    assert!(page.contains("textContent"));
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing from elsewhere");
}

#[test]
fn head_gets_the_headers_only_and_a_strange_host_is_not_repeated() {
    let (_, out) = ask(b"HEAD / HTTP/1.1\r\nHost: a\"b;script-src *\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(body(&out), "");
    let policy = header(&out, "content-security-policy").unwrap();
    assert!(policy.ends_with("connect-src 'self'"), "{policy}");
}

#[test]
fn errors_are_answered_and_close() {
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(status(&get("/index.html")), 404);
    assert_eq!(status(&get("/ws/")), 404);
    assert_eq!(status(&get("/favicon.ico")), 404);
    assert_eq!(status("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
    assert_eq!(status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 405);
    let (_, out) = ask(b"DELETE /ws HTTP/1.1\r\n\r\n");
    assert_eq!(header(&out, "allow"), Some("GET, HEAD"));
    assert_eq!(status("GET / HTTP/1.1\r\nHost h\r\n\r\n"), 400);
    let (tls, _) = ask(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert!(matches!(tls, Opening::Answered(Answer { status: 400, .. })), "TLS on a plain port");
    assert_eq!(status("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 200);
    assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
}

#[test]
fn bad_upgrades_are_answered_400_or_426() {
    let without = |name: &str| {
        UPGRADE
            .lines()
            .filter(|line| !line.starts_with(name))
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    };
    let with = |from: &str, to: &str| UPGRADE.replace(from, to);
    assert_eq!(status(UPGRADE), 101);
    assert_eq!(status(&with("keep-alive, Upgrade", "upgrade")), 101);
    assert_eq!(status(&with("Upgrade: websocket", "Upgrade: WebSocket")), 101);
    assert_eq!(status("GET /ws HTTP/1.1\r\nHost: h\r\n\r\n"), 400, "a browser visiting /ws");
    assert_eq!(status(&without("Upgrade:")), 400);
    assert_eq!(status(&without("Connection:")), 400);
    assert_eq!(status(&without("Host:")), 400);
    assert_eq!(status(&without("Sec-WebSocket-Key:")), 400);
    assert_eq!(status(&with("dGhlIHNhbXBsZSBub25jZQ==", "short==")), 400);
    assert_eq!(status(&with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=!")), 400);
    assert_eq!(status(&with("HTTP/1.1", "HTTP/1.0")), 400);
    assert_eq!(status(&with("GET", "HEAD")), 400);
    assert_eq!(status(&with("Origin:", "Content-Length: 5\r\nOrigin:")), 400);
    assert_eq!(status(&with("Origin:", "Transfer-Encoding: chunked\r\nOrigin:")), 400);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    assert_eq!(status(&with(key, &format!("{key}\r\n{key}"))), 400, "two keys");
    assert_eq!(status(&with("Version: 13", "Version: 8")), 426);
    let (_, out) = ask(with("Version: 13", "Version: 8").as_bytes());
    assert_eq!(header(&out, "sec-websocket-version"), Some("13"));
}

#[test]
fn a_request_in_pieces_is_answered_as_in_one() {
    let request = UPGRADE.as_bytes();
    let (_, whole) = ask(request);
    for at in 0..request.len() {
        let mut out = Vec::new();
        let first = HttpOpening::new(WebLimits::default()).advance(&request[..at], &mut out);
        let Opening::NeedInput(opening) = first else {
            panic!("answered after {at} bytes");
        };
        assert!(out.is_empty());
        assert!(matches!(opening.advance(&request[at..], &mut out), Opening::Upgraded { .. }));
        assert_eq!(String::from_utf8(out).unwrap(), whole);
    }
}

#[test]
fn requests_over_the_limit_are_answered_431() {
    let limits = WebLimits::default();
    let filler = format!("X-Filler: {}\r\n", "f".repeat(100));
    let big = format!("GET / HTTP/1.1\r\n{}\r\n", filler.repeat(limits.max_request_bytes / 100));
    assert_eq!(status(&big), 431);
    // Unfinished and over the limit, fed in pieces.
    let mut opening = HttpOpening::new(limits);
    let mut out = Vec::new();
    let mut fed = 0;
    let status = loop {
        match opening.advance(&big.as_bytes()[fed..fed + 1000], &mut out) {
            Opening::NeedInput(more) => opening = more,
            Opening::Answered(answer) => break answer.status,
            Opening::Upgraded { .. } => panic!("upgraded"),
        }
        fed += 1000;
        assert!(fed <= limits.max_request_bytes + 1000);
    };
    assert_eq!(status, 431);
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100));
    assert_eq!(self::status(&many), 431);
}
