//! The bytes of the HTTP answers: the page with the headers that keep it to itself (no caching,
//! a Content-Security-Policy that lets it run only its own script and style and talk only to its
//! own server), the WebSocket upgrade, and short plain-text errors. Every answer but the upgrade
//! ends the connection (`Connection: close`).

use std::fmt::Write as _;

use super::page;

/// The error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    TooLarge,
}

impl Status {
    pub(super) fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::TooLarge => 431,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::TooLarge => "Request Header Fields Too Large",
        }
    }
}

/// Headers on every answer that is not the upgrade.
const COMMON: &str = "Cache-Control: no-store\r\n\
    X-Content-Type-Options: nosniff\r\n\
    Connection: close\r\n";

/// An error answer with a one-line plain-text body.
pub(super) fn error(status: Status, out: &mut Vec<u8>) {
    let body = format!("{} {}\n", status.code(), status.reason());
    let extra = match status {
        Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         {COMMON}{extra}\r\n",
        status.code(),
        status.reason(),
        body.len(),
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// 426 for a WebSocket version other than 13, saying which one the server speaks (RFC 6455
/// §4.4).
pub(super) fn upgrade_required(out: &mut Vec<u8>) {
    let body = "426 Upgrade Required: WebSocket version 13\n";
    let head = format!(
        "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{COMMON}\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// 101: the connection speaks WebSocket from the next byte on.
pub(super) fn switching(accept: &str, out: &mut Vec<u8>) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    out.extend_from_slice(head.as_bytes());
}

/// 200 with the page (without it for HEAD). `host` is the request's `Host`, named in the policy
/// beside `'self'` for browsers whose `'self'` does not cover `ws:`/`wss:`.
pub(super) fn page(host: Option<&str>, head_only: bool, out: &mut Vec<u8>) {
    let page = page::page();
    let mut policy = page.policy.clone();
    policy.push_str("; connect-src 'self'");
    if let Some(host) = host.map(str::trim).filter(|host| is_authority(host)) {
        // Infallible: writing to a String.
        let _ = write!(policy, " ws://{host} wss://{host}");
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {policy}\r\nReferrer-Policy: no-referrer\r\n\
         X-Frame-Options: DENY\r\n{COMMON}\r\n",
        page.html.len()
    );
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(page.html.as_bytes());
    }
}

/// A `Host` value safe to repeat in a header: a name or address and a port, nothing else.
fn is_authority(host: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    !host.is_empty() && host.len() <= 255 && host.chars().all(allowed)
}
