//! How a client's bytes travel: a client connection has a *transport* between its socket and
//! the lines the rest of the worker deals in (the transport contract in docs/tls.md).
//!
//! `Plain` is today's path and costs nothing: the worker writes queued lines and its share of
//! the shared room buffer straight to the socket (`Client::flush_with`). A `Layered` transport
//! has layers that transform every byte both ways: TLS records (`[Tls]`), WebSocket frames
//! (`[Web]`), or frames inside records (`[Tls, Web]`, wss). It has an *opening* phase (a
//! handshake, an HTTP request) before the client may join the room, then encodes whole lines
//! into wire bytes, decodes wire bytes into what the `LineDecoder` reads, ends the session
//! politely, and turns into data for a hand-off. Wire bytes not yet written wait in its own
//! buffer, always whole units (records, or frames without TLS) from its start, so a client cut
//! off as too slow can be given the rest of the unit in flight and nothing else.
//!
//! The event loop only ever asks the transport to read, flush, discard, close or hand off;
//! which layers there are is this module's business.

mod opening;
mod tls;
mod web;

pub use opening::Openings;

use crate::bus::handoff::TransportState;
use crate::listener::Kind;
use crate::protocol::decoder::LineDecoder;
use crate::tls::TlsAcceptor;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use tls::TlsLayer;
use web::WebLayer;

/// Capacity of the wire buffer kept after it was written out; more is freed at once.
const KEEP_CAPACITY: usize = 4 * 1024;

/// What one read did.
pub enum Input {
    /// This many bytes came from the socket (what they decoded to went into the decoder).
    Data(usize),
    /// Nothing to read right now.
    Empty,
    /// The client closed its side (or its session: close_notify, a WebSocket close).
    Eof,
    /// The opening phase finished with this read: the client may join the room. Bytes that
    /// followed the handshake are in the decoder.
    Opened,
    /// The layer refused what came (a failed handshake, a bad record, a bad frame): the reason,
    /// for the debug log. The answer it calls for (an alert, a close frame) waits in the wire
    /// buffer; close after it.
    Refused(String),
    /// The opening ended without a session (an HTTP request answered with the page or an
    /// error): what happened, for the debug log. The answer waits in the wire buffer; close
    /// after it.
    Answered(String),
}

/// A client connection's transport.
pub enum Transport {
    /// Lines straight over TCP.
    Plain,
    /// Layers over the socket; boxed so a plain client pays a pointer for the possibility.
    Layered(Box<Layered>),
}

/// A transport with layers, and the wire bytes they produced that the socket has not taken.
pub struct Layered {
    /// The TLS session, outermost, if any.
    tls: Option<TlsLayer>,
    /// The WebSocket, inside TLS if there is TLS, if any.
    web: Option<WebLayer>,
    /// Where the client came from, while its opening phase lasts.
    opening_peer: Option<SocketAddr>,
    /// The server is shutting down: a WebSocket is closed with 1001 (going away).
    away: bool,
    /// Wire bytes to write from `wire_pos` on; `wire` starts at a unit boundary.
    wire: Vec<u8>,
    wire_pos: usize,
}

impl Transport {
    /// The transport of a connection accepted on a listener of `kind`; `peer` is where it came
    /// from. `None` for a kind this worker has no means to serve (no certificate loaded).
    pub fn accepted(kind: Kind, peer: SocketAddr, tls: Option<&TlsAcceptor>) -> Option<Transport> {
        let (tls, web) = match kind {
            Kind::Plain => return Some(Transport::Plain),
            Kind::Tls => (Some(TlsLayer::accept(tls?).ok()?), None),
            Kind::Web => (None, Some(WebLayer::accept())),
            Kind::WebTls => (Some(TlsLayer::accept(tls?).ok()?), Some(WebLayer::accept())),
        };
        let mut layered = Layered::new(tls, web, Vec::new());
        layered.opening_peer = Some(peer);
        Some(Transport::Layered(Box::new(layered)))
    }

    /// What `chatd who` calls it.
    pub fn kind(&self) -> Kind {
        match self {
            Transport::Plain => Kind::Plain,
            Transport::Layered(layered) => match (&layered.tls, &layered.web) {
                (_, None) => Kind::Tls,
                (None, Some(_)) => Kind::Web,
                (Some(_), Some(_)) => Kind::WebTls,
            },
        }
    }

    /// Wire bytes produced by the layers and not yet written.
    pub fn unsent(&self) -> usize {
        match self {
            Transport::Plain => 0,
            Transport::Layered(layered) => layered.wire.len() - layered.wire_pos,
        }
    }

    /// Where a connection in its opening phase came from, once: its opening is over.
    pub fn take_opening_peer(&mut self) -> Option<SocketAddr> {
        match self {
            Transport::Plain => None,
            Transport::Layered(layered) => layered.opening_peer.take(),
        }
    }

    /// The server is shutting down: the session's close says so (WebSocket 1001).
    pub fn going_away(&mut self) {
        if let Transport::Layered(layered) = self {
            layered.away = true;
        }
    }

    /// One read from `stream`: plaintext goes into `decoder`; what the layers must answer goes
    /// into the wire buffer. Sets nothing else: `can_read` is the caller's.
    pub fn read(
        &mut self,
        stream: &mut TcpStream,
        scratch: &mut [u8],
        decoder: &mut LineDecoder,
    ) -> io::Result<Input> {
        let n = loop {
            match stream.read(scratch) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        match self {
            Transport::Plain if n == 0 => Ok(Input::Eof),
            Transport::Plain => {
                decoder.feed(&scratch[..n]);
                Ok(Input::Data(n))
            }
            Transport::Layered(layered) => layered.decode(&scratch[..n], n == 0, decoder),
        }
    }

    /// Layered only: encodes the client's own queued lines and then its share of the room
    /// (`own` and `share`, whole lines each), ends the session after them when `closing`, and
    /// writes what the socket takes. Returns the bytes written. Lines queued while the
    /// connection is still opening are not for the wire and are dropped.
    pub fn flush_layered(
        layered: &mut Layered,
        stream: &mut TcpStream,
        own: &[u8],
        share: &[u8],
        closing: bool,
    ) -> io::Result<usize> {
        let wire = &mut layered.wire;
        match (&mut layered.tls, &mut layered.web) {
            (Some(tls), None) => {
                tls.encode(own, wire, tls::lines_end)?;
                tls.encode(share, wire, tls::lines_end)?;
            }
            (None, Some(web)) => {
                web.encode(own, wire);
                web.encode(share, wire);
                if closing {
                    web.close(layered.away, wire);
                }
            }
            (Some(tls), Some(web)) => {
                let mut frames = Vec::new();
                web.encode(own, &mut frames);
                web.encode(share, &mut frames);
                if closing {
                    web.close(layered.away, &mut frames);
                }
                tls.encode(&frames, wire, web::frames_end)?;
            }
            (None, None) => {}
        }
        if closing {
            if let Some(tls) = &mut layered.tls {
                tls.close(wire);
            }
        }
        layered.write(stream)
    }

    /// A client cut off as too slow: drops the wire bytes not yet written, but for the rest
    /// of the unit the socket is in the middle of (units hold whole lines).
    pub fn discard_unsent(&mut self) {
        if let Transport::Layered(layered) = self {
            let keep_to = unit_end(&layered.wire, layered.tls.is_some(), layered.wire_pos);
            layered.wire = layered.wire[layered.wire_pos..keep_to].to_vec();
            layered.wire_pos = 0;
        }
    }

    /// Gives back an empty wire buffer, and what the layers hold only while busy.
    pub fn release_idle_buffers(&mut self) {
        if let Transport::Layered(layered) = self {
            if let Some(tls) = layered.tls.as_mut() {
                tls.release_idle();
            }
            if layered.wire_pos == layered.wire.len() && layered.wire.capacity() > 0 {
                layered.wire = Vec::new();
                layered.wire_pos = 0;
            }
        }
    }

    /// The transport as data for a hand-off (`None` for plain), wire bytes not yet written
    /// included. Only an open transport can go (a handshake is not data): an error otherwise.
    pub fn into_state(self) -> Result<Option<Box<TransportState>>, &'static str> {
        let Transport::Layered(layered) = self else { return Ok(None) };
        let Layered { tls, web, mut wire, wire_pos, .. } = *layered;
        wire.drain(..wire_pos);
        let unsent = wire;
        let tls = tls.map(|tls| tls.into_state().ok_or("a TLS session that is not open"));
        let web = web.map(|web| web.into_state().ok_or("a WebSocket that is not open"));
        let state = match (tls.transpose()?, web.transpose()?) {
            (Some(session), None) => TransportState::Tls { session, unsent },
            (None, Some(socket)) => TransportState::Web { socket, unsent },
            (Some(session), Some(socket)) => TransportState::TlsWeb { session, socket, unsent },
            (None, None) => return Err("a transport without layers"),
        };
        Ok(Some(Box::new(state)))
    }

    /// The transport a hand-off brought.
    pub fn restore(state: Option<Box<TransportState>>) -> Result<Transport, String> {
        let Some(state) = state else { return Ok(Transport::Plain) };
        let tls = |session| TlsLayer::restore(session).map_err(|e| e.to_string());
        let web = |socket| WebLayer::restore(socket).map_err(|e| e.to_string());
        let layered = match *state {
            TransportState::Tls { session, unsent } => {
                Layered::new(Some(tls(session)?), None, unsent)
            }
            TransportState::Web { socket, unsent } => {
                Layered::new(None, Some(web(socket)?), unsent)
            }
            TransportState::TlsWeb { session, socket, unsent } => {
                Layered::new(Some(tls(session)?), Some(web(socket)?), unsent)
            }
        };
        Ok(Transport::Layered(Box::new(layered)))
    }
}

impl Layered {
    fn new(tls: Option<TlsLayer>, web: Option<WebLayer>, wire: Vec<u8>) -> Layered {
        Layered { tls, web, opening_peer: None, away: false, wire, wire_pos: 0 }
    }

    /// Wire bytes in from the socket (`eof`: it closed), through the layers, outermost first.
    fn decode(&mut self, input: &[u8], eof: bool, decoder: &mut LineDecoder) -> io::Result<Input> {
        let wire = &mut self.wire;
        let (tls, web) = (&mut self.tls, &mut self.web);
        let Some(tls) = tls else {
            return Ok(match web {
                Some(web) => web.decode(input, eof, decoder, wire),
                None => Input::Data(input.len()),
            });
        };
        let mut plain = Vec::new();
        let below = tls.decode(input, eof, &mut plain, wire);
        let Some(web) = web else {
            decoder.feed(&plain);
            return Ok(below);
        };
        let closed = match below {
            Input::Refused(_) | Input::Answered(_) => return Ok(below),
            // Still handshaking.
            _ if !tls.is_established() => return Ok(below),
            Input::Eof => true,
            Input::Data(_) | Input::Empty | Input::Opened => false,
        };
        if plain.is_empty() && !closed {
            return Ok(Input::Data(input.len()));
        }
        let mut reply = Vec::new();
        let above = web.decode(&plain, closed, decoder, &mut reply);
        tls.encode(&reply, wire, web::frames_end)?;
        Ok(match above {
            Input::Data(_) => Input::Data(input.len()),
            other => other,
        })
    }

    /// Writes the wire buffer as far as the socket takes it.
    fn write(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        let mut sent = 0;
        while self.wire_pos < self.wire.len() {
            match stream.write(&self.wire[self.wire_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    self.wire_pos += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Ok(sent);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wire.clear();
        self.wire_pos = 0;
        if self.wire.capacity() > KEEP_CAPACITY {
            self.wire = Vec::new();
        }
        Ok(sent)
    }

    /// Drops the whole units already written once they are half the buffer or more, so the
    /// buffer keeps starting at a unit boundary.
    fn compact(&mut self) {
        if self.wire_pos >= self.wire.len() / 2 {
            let boundary = unit_start(&self.wire, self.tls.is_some(), self.wire_pos);
            self.wire.drain(..boundary);
            self.wire_pos -= boundary;
        }
    }
}

/// The records in `wire`, as (start, end) offsets; the last may run past the end.
fn records(wire: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = wire.get(at..at + 5)?;
        let start = at;
        at += 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        Some((start, at))
    })
}

/// The units of `wire`: TLS records (`tls`), else WebSocket frames.
fn units(wire: &[u8], tls: bool) -> Box<dyn Iterator<Item = (usize, usize)> + '_> {
    if tls { Box::new(records(wire)) } else { Box::new(web::frames(wire)) }
}

/// The start of the unit holding byte `pos` (or `pos` itself at the end).
fn unit_start(wire: &[u8], tls: bool, pos: usize) -> usize {
    units(wire, tls).find(|&(_, end)| end > pos).map_or(pos.min(wire.len()), |(start, _)| start)
}

/// The end of the unit holding byte `pos`; `pos` when it starts one.
fn unit_end(wire: &[u8], tls: bool, pos: usize) -> usize {
    match units(wire, tls).find(|&(_, end)| end > pos) {
        Some((start, end)) if start < pos => end.min(wire.len()),
        _ => pos.min(wire.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_boundaries() {
        // Two records: 5 + 3 bytes, then 5 + 2.
        let wire = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 2, 4, 5];
        assert_eq!(unit_start(&wire, true, 0), 0);
        assert_eq!(unit_start(&wire, true, 7), 0);
        assert_eq!(unit_start(&wire, true, 8), 8);
        assert_eq!(unit_start(&wire, true, 15), 15);
        assert_eq!(unit_end(&wire, true, 0), 0);
        assert_eq!(unit_end(&wire, true, 3), 8);
        assert_eq!(unit_end(&wire, true, 8), 8);
        assert_eq!(unit_end(&wire, true, 9), 15);
    }

    #[test]
    fn frame_boundaries() {
        // Two frames: 2 + 3 bytes, then 2 + 1.
        let mut wire = Vec::new();
        crate::web::frame_lines(b"abc\r\nd\r\n", &mut wire);
        assert_eq!(wire.len(), 8);
        assert_eq!(unit_start(&wire, false, 4), 0);
        assert_eq!(unit_start(&wire, false, 5), 5);
        assert_eq!(unit_end(&wire, false, 1), 5);
        assert_eq!(unit_end(&wire, false, 5), 5);
        assert_eq!(unit_end(&wire, false, 6), 8);
    }
}
