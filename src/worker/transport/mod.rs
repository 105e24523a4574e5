//! How a client's bytes travel: a client connection has a *transport* between its socket and
//! the lines the rest of the worker deals in (the transport contract in docs/tls.md).
//!
//! `Plain` is today's path and costs nothing: the worker writes queued lines and its share of
//! the shared room buffer straight to the socket (`Client::flush_with`). A `Layered` transport
//! has layers that transform every byte both ways (TLS records today; WebSocket frames, and
//! frames inside TLS, fit the same shape): it has an *opening* phase (a handshake) before the
//! client may join the room, then encodes whole lines into wire bytes, decodes wire bytes into
//! what the `LineDecoder` reads, ends the session politely, and turns into data for a hand-off.
//! Wire bytes not yet written wait in its own buffer, always whole records from its start, so a
//! client cut off as too slow can be given the rest of the record in flight and nothing else.
//!
//! The event loop only ever asks the transport to read, flush, discard, close or hand off;
//! which layers there are is this module's business.

mod opening;
mod tls;

pub use opening::Openings;

use crate::bus::handoff::TransportState;
use crate::listener::Kind;
use crate::protocol::decoder::LineDecoder;
use crate::tls::TlsAcceptor;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use tls::TlsLayer;

/// Capacity of the wire buffer kept after it was written out; more is freed at once.
const KEEP_CAPACITY: usize = 4 * 1024;

/// What one read did.
pub enum Input {
    /// This many bytes came from the socket (what they decoded to went into the decoder).
    Data(usize),
    /// Nothing to read right now.
    Empty,
    /// The client closed its side (or its session: close_notify).
    Eof,
    /// The opening phase finished with this read: the client may join the room. Bytes that
    /// followed the handshake are in the decoder.
    Opened,
    /// The layer refused what came (a failed handshake, a bad record): the reason, for the
    /// debug log. The answer it calls for (an alert) waits in the wire buffer; close after it.
    Refused(String),
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
    layer: Layer,
    /// Where the client came from, while its opening phase lasts.
    opening_peer: Option<SocketAddr>,
    /// Wire bytes to write from `wire_pos` on; `wire` starts at a record boundary.
    wire: Vec<u8>,
    wire_pos: usize,
}

/// The layers of a connection, outermost first.
enum Layer {
    Tls(TlsLayer),
}

impl Transport {
    /// The transport of a connection accepted on a listener of `kind`; `peer` is where it came
    /// from. `None` for a kind this worker has no means to serve (no certificate loaded).
    pub fn accepted(kind: Kind, peer: SocketAddr, tls: Option<&TlsAcceptor>) -> Option<Transport> {
        match kind {
            Kind::Plain => Some(Transport::Plain),
            Kind::Tls => {
                let layer = TlsLayer::accept(tls?).ok()?;
                let mut transport = Transport::layered(Layer::Tls(layer), Vec::new());
                if let Transport::Layered(layered) = &mut transport {
                    layered.opening_peer = Some(peer);
                }
                Some(transport)
            }
        }
    }

    fn layered(layer: Layer, wire: Vec<u8>) -> Transport {
        Transport::Layered(Box::new(Layered { layer, opening_peer: None, wire, wire_pos: 0 }))
    }

    /// What `chatd who` calls it.
    pub fn kind(&self) -> Kind {
        match self {
            Transport::Plain => Kind::Plain,
            Transport::Layered(layered) => match layered.layer {
                Layer::Tls(_) => Kind::Tls,
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
            Transport::Layered(layered) => {
                let Layer::Tls(tls) = &mut layered.layer;
                Ok(tls.decode(&scratch[..n], n == 0, decoder, &mut layered.wire))
            }
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
        let Layer::Tls(tls) = &mut layered.layer;
        tls.encode(own, &mut layered.wire)?;
        tls.encode(share, &mut layered.wire)?;
        if closing {
            tls.close(&mut layered.wire);
        }
        layered.write(stream)
    }

    /// A client cut off as too slow: drops the wire bytes not yet written, but for the rest
    /// of the record the socket is in the middle of (records hold whole lines).
    pub fn discard_unsent(&mut self) {
        if let Transport::Layered(layered) = self {
            let keep_to = record_end(&layered.wire, layered.wire_pos);
            layered.wire = layered.wire[layered.wire_pos..keep_to].to_vec();
            layered.wire_pos = 0;
        }
    }

    /// Gives back an empty wire buffer, and what the layers hold only while busy.
    pub fn release_idle_buffers(&mut self) {
        if let Transport::Layered(layered) = self {
            let Layer::Tls(tls) = &mut layered.layer;
            tls.release_idle();
            if layered.wire_pos == layered.wire.len() && layered.wire.capacity() > 0 {
                layered.wire = Vec::new();
                layered.wire_pos = 0;
            }
        }
    }

    /// The transport as data for a hand-off (`None` for plain), wire bytes not yet written
    /// included. Only an open transport can go (a handshake is not data): an error otherwise.
    pub fn into_state(self) -> Result<Option<Box<TransportState>>, &'static str> {
        match self {
            Transport::Plain => Ok(None),
            Transport::Layered(layered) => {
                let Layered { layer, mut wire, wire_pos, .. } = *layered;
                wire.drain(..wire_pos);
                match layer {
                    Layer::Tls(tls) => tls
                        .into_state(wire)
                        .map(|s| Some(Box::new(s)))
                        .ok_or("a TLS session that is not open"),
                }
            }
        }
    }

    /// The transport a hand-off brought.
    pub fn restore(state: Option<Box<TransportState>>) -> Result<Transport, String> {
        let Some(state) = state else { return Ok(Transport::Plain) };
        match *state {
            TransportState::Tls { session, unsent } => {
                let layer = TlsLayer::restore(session).map_err(|e| e.to_string())?;
                Ok(Transport::layered(Layer::Tls(layer), unsent))
            }
        }
    }
}

impl Layered {
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

    /// Drops the whole records already written once they are half the buffer or more, so the
    /// buffer keeps starting at a record boundary.
    fn compact(&mut self) {
        if self.wire_pos >= self.wire.len() / 2 {
            let boundary = record_start(&self.wire, self.wire_pos);
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

/// The start of the record holding byte `pos` (or `pos` itself at the end).
fn record_start(wire: &[u8], pos: usize) -> usize {
    records(wire).find(|&(_, end)| end > pos).map_or(pos.min(wire.len()), |(start, _)| start)
}

/// The end of the record holding byte `pos`; `pos` when it starts a record.
fn record_end(wire: &[u8], pos: usize) -> usize {
    match records(wire).find(|&(_, end)| end > pos) {
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
        assert_eq!(record_start(&wire, 0), 0);
        assert_eq!(record_start(&wire, 7), 0);
        assert_eq!(record_start(&wire, 8), 8);
        assert_eq!(record_start(&wire, 15), 15);
        assert_eq!(record_end(&wire, 0), 0);
        assert_eq!(record_end(&wire, 3), 8);
        assert_eq!(record_end(&wire, 8), 8);
        assert_eq!(record_end(&wire, 9), 15);
    }
}
