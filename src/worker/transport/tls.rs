//! The TLS layer of a connection (docs/tls.md): a handshake in progress, then an established
//! session whose records the worker seals and opens itself, so that it can move to the next
//! worker with the socket on a reload.

use super::Input;
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

    pub fn is_established(&self) -> bool {
        matches!(self, TlsLayer::Established(_))
    }

    /// Takes bytes as read (`eof`: the client closed its side): handshake messages while
    /// opening, records once established. Plaintext goes to `plain`, what must be answered
    /// to `wire`.
    pub fn decode(
        &mut self,
        input: &[u8],
        eof: bool,
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Input {
        match self {
            TlsLayer::Opening(_) if eof => {
                Input::Refused("closed before the TLS handshake finished".into())
            }
            TlsLayer::Opening(handshake) => match handshake.advance(input, wire) {
                Ok(Progress::NeedInput) => Input::Data(input.len()),
                Ok(Progress::Done) => self.established(plain, wire),
                Err(e) => Input::Refused(e.to_string()),
            },
            TlsLayer::Established(_) if eof => Input::Eof,
            TlsLayer::Established(session) => match session.open(input, plain, wire) {
                Ok(status) => match status {
                    Status::Open => Input::Data(input.len()),
                    Status::PeerClosed => Input::Eof,
                },
                Err(e) => {
                    let _ = session.abort(&e, wire);
                    let reason = e.to_string();
                    *self = TlsLayer::Done;
                    Input::Refused(reason)
                }
            },
            TlsLayer::Done => Input::Data(input.len()),
        }
    }

    /// The handshake is done: the session takes over, and opens what followed the client's
    /// Finished.
    fn established(&mut self, plain: &mut Vec<u8>, wire: &mut Vec<u8>) -> Input {
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
        match self.decode(&rest, false, plain, wire) {
            Input::Refused(reason) => Input::Refused(reason),
            _ => Input::Opened,
        }
    }

    /// Seals whole units (lines, WebSocket frames), many to a record, each record ending where
    /// a unit ends when one fits (so a record in flight never leaves a line half told):
    /// `units_end` finds the end of the last whole unit in a record's worth of bytes, 0 if none.
    pub fn encode(
        &mut self,
        mut lines: &[u8],
        wire: &mut Vec<u8>,
        units_end: fn(&[u8]) -> usize,
    ) -> io::Result<()> {
        let TlsLayer::Established(session) = self else { return Ok(()) };
        while !lines.is_empty() {
            let take = if lines.len() <= MAX_PLAINTEXT {
                lines.len()
            } else {
                match units_end(&lines[..MAX_PLAINTEXT]) {
                    0 => MAX_PLAINTEXT,
                    end => end,
                }
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
    pub fn into_state(self) -> Option<crate::tls::SessionState> {
        match self {
            TlsLayer::Established(session) => Some(session.into_state()),
            TlsLayer::Opening(_) | TlsLayer::Done => None,
        }
    }
}

/// The end of the last whole line in `bytes`, 0 if none.
pub(super) fn lines_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}
