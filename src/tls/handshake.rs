//! One client's TLS 1.3 handshake, done by rustls (its unbuffered API) without blocking: the
//! event loop feeds in what it read and writes out what comes back, as for any non-blocking
//! socket. When the handshake is done the record state is taken out of rustls, through its
//! secret-extraction API, into a [`Session`] that chatd runs itself (docs/tls.md).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rustls::KeyLog;
use rustls::server::ServerConnectionData;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError};

use super::certs::TlsAcceptor;
use super::keys::{self, Secret};
use super::record::{HEADER_LEN, MAX_PLAINTEXT, Session};

/// The first byte of every TLS connection: a handshake record carrying the ClientHello.
const HANDSHAKE_RECORD: u8 = 22;
/// The longest record body rustls accepts during the handshake; longer ones are its to refuse.
const MAX_HANDSHAKE_BODY: usize = MAX_PLAINTEXT + 2048;
/// Unprocessed handshake input kept at most: a ClientHello (at most 64 KiB) in records. No
/// client needs more; the limit bounds what a stalled or hostile one can make chatd hold.
const MAX_PENDING_INPUT: usize = 72 * 1024;

/// A handshake in progress.
pub struct Handshake {
    conn: UnbufferedServerConnection,
    secrets: Arc<TrafficSecrets>,
    /// Bytes from the client that rustls has not consumed; the first `offered` of them are whole
    /// records it has been shown. Records are shown one at a time, so rustls never reads past
    /// the client's Finished: what follows it is application data for the [`Session`].
    input: Vec<u8>,
    offered: usize,
    saw_first_byte: bool,
    started: Instant,
}

/// Where a handshake stands after [`Handshake::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for more from the client (after writing out what `advance` produced).
    NeedInput,
    /// Done: call [`Handshake::finish`].
    Done,
}

/// Why a handshake failed. Whatever rustls wanted to tell the client (an alert) is already in
/// the output; the caller writes it if it can and closes.
#[derive(Debug)]
pub enum HandshakeError {
    /// The client's first byte does not start a TLS handshake: plaintext or another protocol.
    NotTls,
    /// rustls refused the handshake: no TLS 1.3, no common cipher suite, a bad message, an alert.
    Tls(rustls::Error),
    /// The client sent more handshake data than any client needs.
    TooLarge,
    /// The client closed the session (close_notify) before the handshake finished.
    PeerClosed,
    /// The finished session could not be taken out of rustls (a chatd bug, not the client's).
    Extract(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotTls => f.write_str("not a TLS handshake (plaintext?)"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::TooLarge => f.write_str("TLS handshake too large"),
            HandshakeError::PeerClosed => f.write_str("client closed during the TLS handshake"),
            HandshakeError::Extract(e) => write!(f, "cannot take over the TLS session: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What one turn of rustls' state machine asks for next.
enum Next {
    Again,
    Blocked,
    Failed(rustls::Error),
    PeerClosed,
    Unexpected(&'static str),
}

impl Handshake {
    /// Starts a handshake with the acceptor's certificate. The caller enforces the handshake
    /// timeout, counting from [`Handshake::started`].
    pub fn new(acceptor: &TlsAcceptor) -> Result<Handshake, HandshakeError> {
        let secrets = Arc::new(TrafficSecrets::default());
        // rustls hands traffic secrets out only through a key log, so each connection gets a
        // configuration whose key log is its own.
        let mut config = acceptor.config().clone();
        config.key_log = secrets.clone();
        let conn =
            UnbufferedServerConnection::new(Arc::new(config)).map_err(HandshakeError::Tls)?;
        Ok(Handshake {
            conn,
            secrets,
            input: Vec::new(),
            offered: 0,
            saw_first_byte: false,
            started: Instant::now(),
        })
    }

    /// When the handshake started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Takes `input` (bytes read from the client, possibly none) and appends to `out` what must
    /// be written to it.
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, HandshakeError> {
        if !self.saw_first_byte && !input.is_empty() {
            if input[0] != HANDSHAKE_RECORD {
                return Err(HandshakeError::NotTls);
            }
            self.saw_first_byte = true;
        }
        self.input.extend_from_slice(input);
        loop {
            if !self.conn.is_handshaking() {
                return Ok(Progress::Done);
            }
            let status = self.conn.process_tls_records(&mut self.input[..self.offered]);
            let discard = status.discard;
            let next = match status.state {
                Err(e) => Next::Failed(e),
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, out)?;
                    Next::Again
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // `out` holds it; the caller writes it.
                    data.done();
                    Next::Again
                }
                // WriteTraffic comes once the server's Finished is out, before the client's.
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Next::Blocked
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Next::PeerClosed,
                Ok(ConnectionState::ReadTraffic(_)) => Next::Unexpected("application data"),
                Ok(_) => Next::Unexpected("early data"),
            };
            self.input.drain(..discard);
            self.offered -= discard;
            match next {
                Next::Again => {}
                Next::Blocked if !self.conn.is_handshaking() => return Ok(Progress::Done),
                Next::Blocked => {
                    if !self.offer_next_record() {
                        break;
                    }
                }
                Next::Failed(e) => {
                    self.flush_alert(out);
                    return Err(HandshakeError::Tls(e));
                }
                Next::PeerClosed => return Err(HandshakeError::PeerClosed),
                Next::Unexpected(what) => {
                    return Err(HandshakeError::Extract(format!("rustls returned {what}")));
                }
            }
        }
        if self.input.len() > MAX_PENDING_INPUT {
            return Err(HandshakeError::TooLarge);
        }
        Ok(Progress::NeedInput)
    }

    /// The established session, and the bytes the client sent after its Finished (application
    /// data for [`Session::open`]).
    pub fn finish(self) -> Result<(Session, Vec<u8>), HandshakeError> {
        let extract = |what: &str| HandshakeError::Extract(what.to_owned());
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|suite| keys::suite(suite.suite()))
            .ok_or_else(|| extract("no TLS 1.3 cipher suite negotiated"))?;
        let (extracted, _kernel) = self
            .conn
            .dangerous_into_kernel_connection()
            .map_err(|e| HandshakeError::Extract(e.to_string()))?;
        let (client, server) = self.secrets.take().ok_or_else(|| extract("no traffic secrets"))?;
        if !server.gives(suite, &extracted.tx.1) || !client.gives(suite, &extracted.rx.1) {
            return Err(extract("the traffic secrets do not give rustls' keys"));
        }
        let session = Session::new(suite, (server, extracted.tx.0), (client, extracted.rx.0));
        Ok((session, self.input))
    }

    /// Shows rustls the next whole record of input, if one is in; a header rustls will refuse
    /// (too long) is shown with everything after it, for rustls to say why.
    fn offer_next_record(&mut self) -> bool {
        let rest = &self.input[self.offered..];
        let Some(header) = rest.get(..HEADER_LEN) else {
            return false;
        };
        let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if body > MAX_HANDSHAKE_BODY {
            self.offered = self.input.len();
            return true;
        }
        if rest.len() < HEADER_LEN + body {
            return false;
        }
        self.offered += HEADER_LEN + body;
        true
    }

    /// After a failure rustls may have queued an alert for the client; encodes it into `out`.
    /// rustls is shown the same input as before: it may still point into it.
    fn flush_alert(&mut self, out: &mut Vec<u8>) {
        // A fatal alert is one record; the bound only keeps a surprise from looping.
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut self.input[..self.offered]);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode(&mut data, out).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                _ => return,
            }
        }
    }
}

/// Appends the TLS data rustls wants sent to `out`.
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    let start = out.len();
    let len = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(HandshakeError::Extract(e.to_string())),
    };
    out.resize(start + len, 0);
    match data.encode(&mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(HandshakeError::Extract(e.to_string()))
        }
    }
}

/// The key log of one connection: where rustls hands over the first application traffic
/// secrets, which the [`Session`] needs to follow KeyUpdates (rustls' own extraction gives only
/// the keys derived from them).
#[derive(Default)]
struct TrafficSecrets {
    client: OnceLock<Secret>,
    server: OnceLock<Secret>,
}

const CLIENT_TRAFFIC_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_TRAFFIC_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl TrafficSecrets {
    /// The client's and the server's secret.
    fn take(&self) -> Option<(Secret, Secret)> {
        Some((self.client.get()?.clone(), self.server.get()?.clone()))
    }
}

impl KeyLog for TrafficSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_TRAFFIC_SECRET => &self.client,
            SERVER_TRAFFIC_SECRET => &self.server,
            _ => return,
        };
        // A second value cannot come on one connection; if it did, the first stays and the
        // check against rustls' keys in `finish` decides.
        let _ = slot.set(Secret::new(secret));
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_TRAFFIC_SECRET || label == SERVER_TRAFFIC_SECRET
    }
}

impl fmt::Debug for TrafficSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrafficSecrets(<redacted>)")
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("pending_input", &self.input.len())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}
