//! The web side of chatd (docs/web.md): the page at `/` and the WebSocket at `/ws`, as a codec
//! driven on byte buffers, so the worker's event loop runs it like the TLS layer, without
//! knowing HTTP or RFC 6455 (`src/worker/transport/web.rs` drives it).
//!
//! The interface the worker follows:
//!
//! ```text
//! HttpOpening::new(WebLimits::default())
//! HttpOpening::advance(self, input, &mut out) -> Opening   // the opening is consumed:
//!     Opening::NeedInput(opening)        // keep it, feed the next read
//!     Opening::Answered(Answer)          // page or error in `out`: write it, then close
//!     Opening::Upgraded { socket, rest } // 101 in `out`; decode `rest` at once
//! WebSocket::encode(&mut self, lines, &mut out)        // whole CRLF lines -> text frames
//! WebSocket::decode(&mut self, input, &mut lines, &mut reply) -> Result<Decoded, WsError>
//!     lines: payload + "\n" per text message, for the LineDecoder
//!     reply: frames to write back (pong, close, the binary-message notice)
//!     Ok(Decoded::Open) | Ok(Decoded::Closed { code })  // Closed: write `reply`, then close
//!     Err(WsError)                       // the close frame (WsError::code) is in `reply`:
//!                                        // write it, then close; debug-log the error
//! WebSocket::close(&mut self, CloseCode::Normal | CloseCode::Away, &mut out)
//! WebSocket::into_state(self) -> WebState;  WebSocket::restore(WebState) -> Result<_, _>
//! frame_lines(lines, &mut out)  // what `encode` writes: the same bytes for every client
//! ```
//!
//! `advance` takes the opening by value, unlike the first sketch of this interface: an opening
//! that has answered cannot be fed again, and every bad request gets an HTTP answer, so there
//! is no error for the caller to handle. `Decoded::Closed` carries the client's close code for
//! the log. [`frame_lines`] is public so a worker can frame each room line once for all its
//! web clients, as it writes the plain room buffer once for all plain clients.

mod frame;
mod http;
mod page;
mod response;
mod socket;
mod state;

pub use frame::frame_lines;
pub use http::{Answer, HttpOpening, Opening, WebLimits};
pub use socket::{BINARY_NOTICE, Decoded, WebSocket, WsError};
pub use state::{WebRestoreError, WebState};
pub use tungstenite::protocol::frame::coding::CloseCode;

#[cfg(test)]
mod tests;
