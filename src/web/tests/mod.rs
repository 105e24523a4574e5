//! Unit tests of the web codec: the HTTP opening, the framing against tungstenite's own client
//! (its encoder masks with random keys), and the hand-off state.

mod http;
mod socket;
mod state;

use std::io::{self, Cursor, Read, Write};

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::protocol::{Role, WebSocket as Peer};

use super::{Decoded, WebSocket, WsError};

/// A client frame, masked, as tungstenite formats it.
fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    Frame::from_payload(header, payload.to_vec().into()).format(&mut out).unwrap();
    out
}

fn text(payload: &str) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Text), true, payload.as_bytes())
}

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);
const CONTINUE: OpCode = OpCode::Data(Data::Continue);
const PING: OpCode = OpCode::Control(Control::Ping);
const CLOSE: OpCode = OpCode::Control(Control::Close);

/// What decoding some input gave: the lines, the reply bytes and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    lines: Vec<u8>,
    reply: Vec<u8>,
    end: Result<Decoded, WsError>,
}

/// Decodes `pieces` one after the other, stopping at the first error or close.
fn decode_pieces<'a>(
    socket: &mut WebSocket,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut outcome = Outcome { lines: Vec::new(), reply: Vec::new(), end: Ok(Decoded::Open) };
    for piece in pieces {
        outcome.end = socket.decode(piece, &mut outcome.lines, &mut outcome.reply);
        if outcome.end != Ok(Decoded::Open) {
            break;
        }
    }
    outcome
}

fn decode_all(input: &[u8]) -> Outcome {
    decode_pieces(&mut WebSocket::new(), [input])
}

/// The server's bytes as tungstenite's client reads them, and the client's as it writes them.
#[derive(Default)]
struct Pipe {
    from_server: Cursor<Vec<u8>>,
    to_server: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.from_server.read(buf)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_server.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's own client over a [`Pipe`].
fn peer() -> Peer<Pipe> {
    Peer::from_raw_socket(Pipe::default(), Role::Client, None)
}

/// Hands the server's bytes to the client.
fn deliver(peer: &mut Peer<Pipe>, bytes: &[u8]) {
    let pipe = peer.get_mut();
    let mut all = pipe.from_server.get_ref()[pipe.from_server.position() as usize..].to_vec();
    all.extend_from_slice(bytes);
    pipe.from_server = Cursor::new(all);
}

/// Takes what the client wrote.
fn sent(peer: &mut Peer<Pipe>) -> Vec<u8> {
    std::mem::take(&mut peer.get_mut().to_server)
}
