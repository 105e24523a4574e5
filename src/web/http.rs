//! The opening of a web connection: one HTTP/1.1 request, parsed with `httparse`, answered with
//! the page, an error, or the WebSocket upgrade (docs/web.md, "HTTP answers"). Every request gets
//! an answer and, unless it upgrades, the connection then closes: no keep-alive, so a connection
//! costs one request's worth of memory at most (`WebLimits::max_request_bytes`).

use tungstenite::handshake::derive_accept_key;

use super::response::{self, Status};
use super::socket::WebSocket;

/// More header lines than any browser sends.
const MAX_HEADERS: usize = 64;

/// Bounds on what a client may send before its request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebLimits {
    /// The request line and headers together; a longer request is answered 431.
    pub max_request_bytes: usize,
}

impl Default for WebLimits {
    fn default() -> WebLimits {
        WebLimits { max_request_bytes: 8 * 1024 }
    }
}

/// A connection whose request has not fully arrived.
#[derive(Debug)]
pub struct HttpOpening {
    limits: WebLimits,
    /// The request so far, when it came in several reads.
    received: Vec<u8>,
}

/// Where the opening is after some input.
#[derive(Debug)]
pub enum Opening {
    /// The request is unfinished: feed the opening more.
    NeedInput(HttpOpening),
    /// An HTTP answer (the page, or an error) is in `out`: write it, then close.
    Answered(Answer),
    /// `GET /ws` upgraded (the 101 answer is in `out`): the WebSocket, and the bytes that
    /// followed the request, for [`WebSocket::decode`].
    Upgraded { socket: WebSocket, rest: Vec<u8> },
}

/// What a request that did not upgrade was answered, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Why, in a few words.
    pub why: &'static str,
}

impl HttpOpening {
    pub fn new(limits: WebLimits) -> HttpOpening {
        HttpOpening { limits, received: Vec::new() }
    }

    /// Feeds bytes read from the connection (plaintext: TLS already removed). Appends to `out`
    /// what must be written. The opening is consumed: it comes back only while it needs input.
    pub fn advance(mut self, input: &[u8], out: &mut Vec<u8>) -> Opening {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        // A request in one read, nearly all of them, is parsed where it lies.
        let joined;
        let data = if self.received.is_empty() {
            input
        } else {
            self.received.extend_from_slice(input);
            joined = std::mem::take(&mut self.received);
            joined.as_slice()
        };
        let parsed = request.parse(data);
        let limit = self.limits.max_request_bytes;
        match parsed {
            Ok(httparse::Status::Complete(len)) if len <= limit => {
                respond(&request, &data[len..], out)
            }
            Ok(httparse::Status::Partial) if data.len() < limit => {
                self.received = data.to_vec();
                Opening::NeedInput(self)
            }
            Ok(_) => answer(out, Status::TooLarge, "request too large"),
            Err(httparse::Error::TooManyHeaders) => {
                answer(out, Status::TooLarge, "too many header lines")
            }
            Err(_) => answer(out, Status::BadRequest, "malformed request"),
        }
    }
}

fn answer(out: &mut Vec<u8>, status: Status, why: &'static str) -> Opening {
    response::error(status, out);
    Opening::Answered(Answer { status: status.code(), why })
}

/// Answers a whole request; `rest` is what the client sent after it.
fn respond(request: &httparse::Request<'_, '_>, rest: &[u8], out: &mut Vec<u8>) -> Opening {
    let head = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return answer(out, Status::MethodNotAllowed, "method not allowed"),
    };
    let path = request.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    match path {
        "/" => {
            response::page(header(request, "host"), head, out);
            Opening::Answered(Answer { status: 200, why: "the page" })
        }
        "/ws" if head => answer(out, Status::BadRequest, "a WebSocket upgrade is a GET"),
        "/ws" => match upgrade_key(request) {
            Ok(key) => {
                response::switching(&derive_accept_key(key.as_bytes()), out);
                Opening::Upgraded { socket: WebSocket::new(), rest: rest.to_vec() }
            }
            Err(BadUpgrade::Version) => {
                response::upgrade_required(out);
                Opening::Answered(Answer { status: 426, why: "WebSocket version other than 13" })
            }
            Err(BadUpgrade::Request(why)) => answer(out, Status::BadRequest, why),
        },
        _ => answer(out, Status::NotFound, "no such page"),
    }
}

enum BadUpgrade {
    Version,
    Request(&'static str),
}

/// The `Sec-WebSocket-Key` of a valid upgrade request (RFC 6455 §4.2.1).
fn upgrade_key<'r>(request: &httparse::Request<'_, 'r>) -> Result<&'r str, BadUpgrade> {
    let bad = |why| Err(BadUpgrade::Request(why));
    if request.version != Some(1) {
        return bad("a WebSocket upgrade needs HTTP/1.1");
    }
    if header(request, "host").is_none() {
        return bad("no Host");
    }
    if !has_token(request, "upgrade", "websocket") {
        return bad("no Upgrade: websocket");
    }
    if !has_token(request, "connection", "upgrade") {
        return bad("no Connection: Upgrade");
    }
    if header(request, "content-length").is_some_and(|len| len.trim() != "0")
        || header(request, "transfer-encoding").is_some()
    {
        return bad("an upgrade request with a body");
    }
    if header(request, "sec-websocket-version").map(str::trim) != Some("13") {
        return Err(BadUpgrade::Version);
    }
    let mut keys = headers(request, "sec-websocket-key");
    match (keys.next().map(str::trim), keys.next()) {
        (Some(key), None) if is_websocket_key(key) => Ok(key),
        _ => bad("no valid Sec-WebSocket-Key"),
    }
}

/// The values of the header lines named `name`, as text.
fn headers<'r>(
    request: &httparse::Request<'_, 'r>,
    name: &'static str,
) -> impl Iterator<Item = &'r str> {
    request
        .headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
}

fn header<'r>(request: &httparse::Request<'_, 'r>, name: &'static str) -> Option<&'r str> {
    headers(request, name).next()
}

/// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) holds `token`.
fn has_token(request: &httparse::Request<'_, '_>, name: &'static str, token: &str) -> bool {
    headers(request, name)
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Base64 of 16 bytes: 22 characters and `==`.
fn is_websocket_key(key: &str) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24 && key.ends_with("==") && key.as_bytes()[..22].iter().all(base64)
}
