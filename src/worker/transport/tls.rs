//! The TLS layer of a connection (docs/tls.md): a handshake in progress, then an established
//! session whose records the worker seals and opens itself, so that it can move to the next
//! worker with the socket on a reload.

use super::Input;
use crate::bus::handoff::TransportState;
use crate::protocol::decoder::LineDecoder;
use crate::tls::{Handshake, MAX_PLAINTEXT, Progress, RestoreError, Session, Status, TlsAcceptor};
use std::io;

pub(super) enum TlsLayer {
    /// Before the client may join: the handshake.
    Opening(Box<Handshake>),
    Established(Session),
    /// The session ended (an error, or a hand-off took its state): nothing more to seal.
    Done,
}

impl TlsLayer {
    pub fn accept(acceptor: &TlsAcceptor) -> Result<TlsLayer, String> {
        let handshake = Handshake::new(acceptor).map_err(|e| e.to_string())?;
        Ok(TlsLayer::Opening(Box::new(handshake)))
    }

    pub fn restore(state: crate::tls::SessionState) -> Result<TlsLayer, RestoreError> {
        Session::restore(state).map(TlsLayer::Established)
    }

    /// Takes bytes as read (`eof`: the client closed its side): handshake messages while
    /// opening, records once established. Plaintext goes to `decoder`, what must be answered
    /// to `wire`.
    pub fn decode(
        &mut self,
        input: &[u8],
        eof: bool,
        decoder: &mut LineDecoder,
        wire: &mut Vec<u8>,
    ) -> Input {
        match self {
            TlsLayer::Opening(_) if eof => {
                Input::Refused("closed before the TLS handshake finished".into())
            }
            TlsLayer::Opening(handshake) => match handshake.advance(input, wire) {
                Ok(Progress::NeedInput) => Input::Data(input.len()),
                Ok(Progress::Done) => self.established(decoder, wire),
                Err(e) => Input::Refused(e.to_string()),
            },
            TlsLayer::Established(_) if eof => Input::Eof,
            TlsLayer::Established(session) => {
                let mut plain = Vec::new();
                match session.open(input, &mut plain, wire) {
                    Ok(status) => {
                        decoder.feed(&plain);
                        match status {
                            Status::Open => Input::Data(input.len()),
                            Status::PeerClosed => Input::Eof,
                        }
                    }
                    Err(e) => {
                        let _ = session.abort(&e, wire);
                        let reason = e.to_string();
                        *self = TlsLayer::Done;
                        Input::Refused(reason)
                    }
                }
            }
            TlsLayer::Done => Input::Data(input.len()),
        }
    }

    /// The handshake is done: the session takes over, and opens what followed the client's
    /// Finished.
    fn established(&mut self, decoder: &mut LineDecoder, wire: &mut Vec<u8>) -> Input {
        let TlsLayer::Opening(handshake) = std::mem::replace(self, TlsLayer::Done) else {
            return Input::Refused("no handshake to finish".into());
        };
        let (session, rest) = match handshake.finish() {
            Ok(done) => done,
            Err(e) => return Input::Refused(e.to_string()),
        };
        *self = TlsLayer::Established(session);
        if rest.is_empty() {
            return Input::Opened;
        }
        match self.decode(&rest, false, decoder, wire) {
            Input::Refused(reason) => Input::Refused(reason),
            _ => Input::Opened,
        }
    }

    /// Seals whole lines, many to a record, each record ending at a line's end where a line
    /// fits (so a record in flight never leaves a line half told).
    pub fn encode(&mut self, mut lines: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
        let TlsLayer::Established(session) = self else { return Ok(()) };
        while !lines.is_empty() {
            let take = if lines.len() <= MAX_PLAINTEXT {
                lines.len()
            } else {
                let window = &lines[..MAX_PLAINTEXT];
                window.iter().rposition(|&b| b == b'\n').map_or(MAX_PLAINTEXT, |i| i + 1)
            };
            session.seal(&lines[..take], wire).map_err(io::Error::other)?;
            lines = &lines[take..];
        }
        Ok(())
    }

    /// Lets an idle session drop its expanded keys (see [`Session::release_idle`]).
    pub fn release_idle(&mut self) {
        if let TlsLayer::Established(session) = self {
            session.release_idle();
        }
    }

    /// close_notify, after everything sealed so far (once).
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        if let TlsLayer::Established(session) = self {
            let _ = session.close(wire);
        }
    }

    /// The session as data; `None` if there is none to continue.
    pub fn into_state(self, unsent: Vec<u8>) -> Option<TransportState> {
        match self {
            TlsLayer::Established(session) => {
                Some(TransportState::Tls { session: session.into_state(), unsent })
            }
            TlsLayer::Opening(_) | TlsLayer::Done => None,
        }
    }
}
