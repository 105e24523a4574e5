//! The web layer of a connection (docs/web.md): one HTTP request, answered (the page, an error)
//! or upgraded to a WebSocket, whose frames then carry the lines both ways. `src/web/` is the
//! codec; this is where the worker drives it. Below it is the socket or a TLS session.

use super::Input;
use crate::protocol::decoder::LineDecoder;
use crate::web::{
    CloseCode, Decoded, HttpOpening, Opening, WebLimits, WebRestoreError, WebSocket, WebState,
};

pub(super) enum WebLayer {
    /// Before the client may join: its HTTP request.
    Opening(HttpOpening),
    /// The request was answered without an upgrade: the answer goes out, then the connection
    /// closes; nothing more is read or framed.
    Answered,
    Established(WebSocket),
}

impl WebLayer {
    pub fn accept() -> WebLayer {
        WebLayer::Opening(HttpOpening::new(WebLimits::default()))
    }

    pub fn restore(state: WebState) -> Result<WebLayer, WebRestoreError> {
        WebSocket::restore(state).map(WebLayer::Established)
    }

    /// Takes the bytes from below (`eof`: the client closed its side, or its TLS session): the
    /// request while opening, frames once upgraded. Lines go to `decoder`; what must be written
    /// back (the HTTP answer, pong, close) to `reply`.
    pub fn decode(
        &mut self,
        input: &[u8],
        eof: bool,
        decoder: &mut LineDecoder,
        reply: &mut Vec<u8>,
    ) -> Input {
        match self {
            WebLayer::Opening(_) if eof => {
                *self = WebLayer::Answered;
                Input::Answered("closed before its request was complete".into())
            }
            WebLayer::Opening(_) => {
                let WebLayer::Opening(opening) = std::mem::replace(self, WebLayer::Answered) else {
                    return Input::Data(input.len());
                };
                match opening.advance(input, reply) {
                    Opening::NeedInput(opening) => {
                        *self = WebLayer::Opening(opening);
                        Input::Data(input.len())
                    }
                    Opening::Answered(answer) => {
                        Input::Answered(format!("answered {} ({})", answer.status, answer.why))
                    }
                    Opening::Upgraded { socket, rest } => {
                        *self = WebLayer::Established(socket);
                        match self.decode(&rest, false, decoder, reply) {
                            Input::Refused(reason) => Input::Refused(reason),
                            _ => Input::Opened,
                        }
                    }
                }
            }
            WebLayer::Answered => Input::Data(input.len()),
            WebLayer::Established(_) if eof => Input::Eof,
            WebLayer::Established(socket) => {
                let mut lines = Vec::new();
                let decoded = socket.decode(input, &mut lines, reply);
                decoder.feed(&lines);
                match decoded {
                    Ok(Decoded::Open) => Input::Data(input.len()),
                    Ok(Decoded::Closed { code }) => {
                        log::debug!("WebSocket closed by the client (code {code:?})");
                        Input::Eof
                    }
                    Err(e) => Input::Refused(e.to_string()),
                }
            }
        }
    }

    /// Whole lines to text frames; nothing before the upgrade.
    pub fn encode(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        if let WebLayer::Established(socket) = self {
            socket.encode(lines, out);
        }
    }

    /// The close frame, after everything framed so far (once): 1001 when `away` (the server
    /// shuts down), 1000 otherwise.
    pub fn close(&mut self, away: bool, out: &mut Vec<u8>) {
        if let WebLayer::Established(socket) = self {
            socket.close(if away { CloseCode::Away } else { CloseCode::Normal }, out);
        }
    }

    /// The WebSocket as data; `None` before the upgrade.
    pub fn into_state(self) -> Option<WebState> {
        match self {
            WebLayer::Established(socket) => Some(socket.into_state()),
            WebLayer::Opening(_) | WebLayer::Answered => None,
        }
    }
}

/// The end of the last whole server frame in `wire` (0 if none is whole), for sealing frames
/// into TLS records without cutting one.
pub(super) fn frames_end(wire: &[u8]) -> usize {
    frames(wire).take_while(|&(_, end)| end <= wire.len()).last().map_or(0, |(_, end)| end)
}

/// The server frames in `wire`, as (start, end) offsets; the last may run past the end.
/// Server frames are unmasked: 2 header bytes, then 2 or 8 of extended length.
pub(super) fn frames(wire: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let first = *wire.get(at + 1)?;
        let start = at;
        let (header, len) = match first & 0x7f {
            126 => {
                let ext = wire.get(at + 2..at + 4)?;
                (4, usize::from(u16::from_be_bytes([ext[0], ext[1]])))
            }
            127 => {
                let ext: [u8; 8] = wire.get(at + 2..at + 10)?.try_into().ok()?;
                (10, usize::try_from(u64::from_be_bytes(ext)).unwrap_or(usize::MAX / 2))
            }
            len => (2, usize::from(len)),
        };
        at = at.saturating_add(header).saturating_add(len);
        Some((start, at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries() {
        let mut wire = Vec::new();
        crate::web::frame_lines(b"ab\r\n", &mut wire);
        let mut long = vec![b'x'; 200];
        long.push(b'\n');
        crate::web::frame_lines(&long, &mut wire);
        crate::web::frame_lines(b"\r\n", &mut wire);
        let found: Vec<(usize, usize)> = frames(&wire).collect();
        assert_eq!(found, [(0, 4), (4, 208), (208, 210)]);
        assert_eq!(frames_end(&wire), 210);
        assert_eq!(frames_end(&wire[..100]), 4);
        assert_eq!(frames_end(&wire[..1]), 0);
    }
}
