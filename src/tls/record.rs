//! The record layer of an established TLS 1.3 session, run by chatd itself once rustls has done
//! the handshake (docs/tls.md): application data sealed into records and opened from them, the
//! peer's KeyUpdate honoured, alerts and close_notify. Its state is plain data (secrets, sequence
//! numbers, a partial record), which is what lets a session move to another process
//! (`handoff`).

use std::{fmt, mem};

use rustls::{AlertDescription, CipherSuite, ContentType, Tls13CipherSuite};

use super::keys::{Receiving, Secret, Sending};

/// The most plaintext one record carries (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
pub(super) const HEADER_LEN: usize = 5;
/// The longest protected record body a peer may send (RFC 8446 §5.2).
const MAX_BODY: usize = MAX_PLAINTEXT + 256;
/// The shortest: the inner content type and a 16-byte tag (every suite chatd offers).
const MIN_BODY: usize = 1 + 16;
/// The outer content type of every protected TLS 1.3 record.
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate message: type, 24-bit length 1, `update_not_requested`.
const KEY_UPDATE_NOTIFY: [u8; KEY_UPDATE_LEN] = [KEY_UPDATE, 0, 0, 1, 0];
pub(super) const KEY_UPDATE_LEN: usize = 5;
/// KeyUpdates accepted in a row without application data between them, as rustls and BoringSSL
/// allow: enough for any real client, and a bound on a peer that only sends KeyUpdates.
pub(super) const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Warning alerts (`user_canceled`, the only one TLS 1.3 allows) tolerated, as rustls does.
pub(super) const MAX_WARNING_ALERTS: u8 = 4;

/// An established session: what [`super::Handshake::finish`] or [`Session::restore`] give.
pub struct Session {
    pub(super) suite: &'static Tls13CipherSuite,
    pub(super) tx: Sending,
    pub(super) rx: Receiving,
    /// The front of a record whose end has not arrived yet (ciphertext).
    pub(super) partial_record: Vec<u8>,
    /// The front of a KeyUpdate split over records (at most 4 bytes).
    pub(super) partial_handshake: Vec<u8>,
    pub(super) key_updates_in_a_row: u8,
    pub(super) warning_alerts: u8,
    pub(super) sent_close: bool,
    pub(super) received_close: bool,
    /// Records sealed under one key before chatd moves to the next: the suite's confidentiality
    /// limit.
    rekey_at: u64,
}

/// Where a session stands after [`Session::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    /// The peer sent close_notify: it sends nothing more (anything after it is ignored), but it
    /// may still read.
    PeerClosed,
}

/// Why a session cannot go on. [`Session::abort`] tells the peer.
#[derive(Debug)]
pub enum RecordError {
    /// A record failed authentication: garbage, tampering, or not from this session.
    BadRecord,
    /// A record header or length no TLS 1.3 peer sends.
    RecordOverflow,
    /// Something TLS 1.3 forbids at this point: the alert to answer with, and what it was.
    Protocol { alert: AlertDescription, what: &'static str },
    /// The peer ended the session with this alert.
    AlertReceived(AlertDescription),
    /// [`Session::seal`] after [`Session::close`]: nothing may follow close_notify.
    Closed,
    /// The suite's encrypter refused (never expected).
    Seal(rustls::Error),
}

impl RecordError {
    /// The alert that tells the peer what went wrong, if it should be told.
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            RecordError::BadRecord => Some(AlertDescription::BadRecordMac),
            RecordError::RecordOverflow => Some(AlertDescription::RecordOverflow),
            RecordError::Protocol { alert, .. } => Some(*alert),
            RecordError::Seal(_) => Some(AlertDescription::InternalError),
            RecordError::AlertReceived(_) | RecordError::Closed => None,
        }
    }

    fn protocol(alert: AlertDescription, what: &'static str) -> RecordError {
        RecordError::Protocol { alert, what }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadRecord => f.write_str("a TLS record failed authentication"),
            RecordError::RecordOverflow => f.write_str("an oversized TLS record"),
            RecordError::Protocol { what, .. } => f.write_str(what),
            RecordError::AlertReceived(alert) => write!(f, "the peer sent the TLS alert {alert:?}"),
            RecordError::Closed => f.write_str("the TLS session is already closed"),
            RecordError::Seal(e) => write!(f, "sealing a TLS record failed: {e}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl Session {
    pub(super) fn new(
        suite: &'static Tls13CipherSuite,
        tx: (Secret, u64),
        rx: (Secret, u64),
    ) -> Session {
        Session {
            suite,
            tx: Sending::new(suite, tx.0, tx.1),
            rx: Receiving::new(suite, rx.0, rx.1),
            partial_record: Vec::new(),
            partial_handshake: Vec::new(),
            key_updates_in_a_row: 0,
            warning_alerts: 0,
            sent_close: false,
            received_close: false,
            rekey_at: suite.common.confidentiality_limit,
        }
    }

    /// The negotiated cipher suite, for logs.
    pub fn suite(&self) -> CipherSuite {
        self.suite.common.suite
    }

    /// Whether the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.received_close
    }

    /// Appends `plaintext` to `out` as application-data records of at most [`MAX_PLAINTEXT`]
    /// bytes each.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.sent_close {
            return Err(RecordError::Closed);
        }
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            if self.tx.seq >= self.rekey_at {
                self.send_key_update(out)?;
            }
            self.tx.seal(ContentType::ApplicationData, chunk, out).map_err(RecordError::Seal)?;
        }
        Ok(())
    }

    /// Appends close_notify to `out`; nothing can be sealed after it. Closing twice sends it once.
    pub fn close(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.send_alert(1, AlertDescription::CloseNotify, out)
    }

    /// Appends the fatal alert that tells the peer about `error` to `out`, if there is one to
    /// send; the session is over either way.
    pub fn abort(&mut self, error: &RecordError, out: &mut Vec<u8>) -> Result<(), RecordError> {
        match error.alert() {
            Some(alert) => self.send_alert(2, alert, out),
            None => Ok(()),
        }
    }

    /// Opens the records in `input` (any number of bytes as read from the socket; a record cut
    /// short is kept for the next call): application data is appended to `plain`, and anything
    /// the protocol requires chatd to send (the answer to a KeyUpdate) to `out`.
    pub fn open(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Status, RecordError> {
        if !self.partial_record.is_empty() && !self.received_close {
            let mut record = mem::take(&mut self.partial_record);
            let taken = complete(&mut record, input)?;
            input = &input[taken..];
            match record_len(&record)? {
                Some(len) if len == record.len() => self.open_record(&record, plain, out)?,
                _ => self.partial_record = record,
            }
        }
        while !self.received_close && !input.is_empty() {
            match record_len(input)? {
                Some(len) if len <= input.len() => {
                    self.open_record(&input[..len], plain, out)?;
                    input = &input[len..];
                }
                _ => {
                    self.partial_record = input.to_vec();
                    break;
                }
            }
        }
        if self.received_close {
            // RFC 8446 §6.1: anything after close_notify is ignored.
            self.partial_record = Vec::new();
        }
        Ok(if self.received_close { Status::PeerClosed } else { Status::Open })
    }

    /// Opens one whole record, decrypting it at the end of `plain` and keeping it there if it is
    /// application data.
    fn open_record(
        &mut self,
        record: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = plain.len();
        plain.extend_from_slice(&record[HEADER_LEN..]);
        let (typ, len) = match self.rx.open(&mut plain[start..]) {
            Ok(opened) => opened,
            Err(e) => {
                plain.truncate(start);
                return Err(match e {
                    rustls::Error::PeerSentOversizedRecord => RecordError::RecordOverflow,
                    rustls::Error::DecryptError => RecordError::BadRecord,
                    _ => RecordError::protocol(
                        AlertDescription::UnexpectedMessage,
                        "a TLS record with an invalid inner content type",
                    ),
                });
            }
        };
        let end = start + len;
        let result = match typ {
            _ if !self.partial_handshake.is_empty() && typ != ContentType::Handshake => {
                Err(RecordError::protocol(
                    AlertDescription::UnexpectedMessage,
                    "a TLS record between the parts of a KeyUpdate",
                ))
            }
            ContentType::ApplicationData => {
                if len > 0 {
                    self.key_updates_in_a_row = 0;
                }
                plain.truncate(end);
                return Ok(());
            }
            _ if len == 0 => Err(RecordError::protocol(
                AlertDescription::UnexpectedMessage,
                "an empty TLS handshake or alert record",
            )),
            ContentType::Handshake => self.on_handshake(&plain[start..end], out),
            ContentType::Alert => self.on_alert(&plain[start..end]),
            _ => Err(RecordError::protocol(
                AlertDescription::UnexpectedMessage,
                "a TLS record of an unexpected content type after the handshake",
            )),
        };
        plain.truncate(start);
        result
    }

    /// Handshake data after the handshake: only KeyUpdate is allowed from a client (RFC 8446
    /// §4.6), and it must end its record.
    fn on_handshake(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        while !bytes.is_empty() {
            let take = (KEY_UPDATE_LEN - self.partial_handshake.len()).min(bytes.len());
            self.partial_handshake.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let message = self.partial_handshake.as_slice();
            if message[0] != KEY_UPDATE {
                return Err(RecordError::protocol(
                    AlertDescription::UnexpectedMessage,
                    "a TLS handshake message other than KeyUpdate after the handshake",
                ));
            }
            if message.len() >= 4 && message[1..4] != [0, 0, 1] {
                return Err(RecordError::protocol(
                    AlertDescription::DecodeError,
                    "a KeyUpdate of the wrong length",
                ));
            }
            if message.len() < KEY_UPDATE_LEN {
                continue;
            }
            let request = message[4];
            self.partial_handshake = Vec::new();
            if !bytes.is_empty() {
                return Err(RecordError::protocol(
                    AlertDescription::UnexpectedMessage,
                    "a KeyUpdate not at the end of its TLS record",
                ));
            }
            self.on_key_update(request, out)?;
        }
        Ok(())
    }

    fn on_key_update(&mut self, request: u8, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.key_updates_in_a_row >= MAX_KEY_UPDATES_IN_A_ROW {
            return Err(RecordError::protocol(
                AlertDescription::UnexpectedMessage,
                "too many KeyUpdates without application data",
            ));
        }
        self.key_updates_in_a_row += 1;
        match request {
            0 => {}
            // update_requested: answer with our own KeyUpdate, sealed under the old key, and
            // seal everything after it under the next one (RFC 8446 §4.6.3).
            1 if !self.sent_close => self.send_key_update(out)?,
            1 => {}
            _ => {
                return Err(RecordError::protocol(
                    AlertDescription::IllegalParameter,
                    "a KeyUpdate request that is neither 0 nor 1",
                ));
            }
        }
        self.rx.update();
        Ok(())
    }

    fn on_alert(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let &[level, description] = bytes else {
            return Err(RecordError::protocol(AlertDescription::DecodeError, "a malformed alert"));
        };
        let description = AlertDescription::from(description);
        if level != 1 && level != 2 {
            return Err(RecordError::protocol(
                AlertDescription::IllegalParameter,
                "an alert of unknown level",
            ));
        }
        if description == AlertDescription::CloseNotify {
            self.received_close = true;
            return Ok(());
        }
        // TLS 1.3 allows one warning alert, user_canceled, which close_notify should follow.
        if level == 1 && description == AlertDescription::UserCanceled {
            if self.warning_alerts >= MAX_WARNING_ALERTS {
                return Err(RecordError::protocol(
                    AlertDescription::DecodeError,
                    "too many warning alerts",
                ));
            }
            self.warning_alerts += 1;
            return Ok(());
        }
        Err(RecordError::AlertReceived(description))
    }

    /// Sends a KeyUpdate (`update_not_requested`) and moves the sending side to the next secret.
    pub(super) fn send_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.tx.seal(ContentType::Handshake, &KEY_UPDATE_NOTIFY, out).map_err(RecordError::Seal)?;
        self.tx.update();
        Ok(())
    }

    fn send_alert(
        &mut self,
        level: u8,
        alert: AlertDescription,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if self.sent_close {
            return Ok(());
        }
        self.sent_close = true;
        self.tx.seal(ContentType::Alert, &[level, u8::from(alert)], out).map_err(RecordError::Seal)
    }

    /// Lets go of what an idle session need not hold: the expanded record keys of a direction
    /// unused since the last call (derived again from the secret for the next record), and
    /// buffer capacity. Called on the worker's quiet tick.
    pub fn release_idle(&mut self) {
        self.tx.release();
        self.rx.release();
        if self.partial_record.is_empty() {
            self.partial_record = Vec::new();
        }
    }

    #[cfg(test)]
    pub(super) fn rekey_after(&mut self, records: u64) {
        self.rekey_at = records;
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite.common.suite)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .field("partial_record_len", &self.partial_record.len())
            .field("sent_close", &self.sent_close)
            .field("received_close", &self.received_close)
            .finish_non_exhaustive()
    }
}

/// The length of the whole record starting at `bytes[0]`, once its header is in; an error for a
/// header no TLS 1.3 peer sends after the handshake.
pub(super) fn record_len(bytes: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    if header[0] != APPLICATION_DATA {
        return Err(RecordError::protocol(
            AlertDescription::UnexpectedMessage,
            "an unprotected TLS record after the handshake",
        ));
    }
    let body = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if body > MAX_BODY {
        return Err(RecordError::RecordOverflow);
    }
    if body < MIN_BODY {
        return Err(RecordError::BadRecord);
    }
    Ok(Some(HEADER_LEN + body))
}

/// Moves bytes of `input` onto the partial `record` until it is whole or `input` runs out;
/// returns how many were taken.
fn complete(record: &mut Vec<u8>, input: &[u8]) -> Result<usize, RecordError> {
    let mut taken = 0;
    loop {
        let want = record_len(record)?.unwrap_or(HEADER_LEN);
        let n = (want - record.len()).min(input.len() - taken);
        record.extend_from_slice(&input[taken..taken + n]);
        taken += n;
        if n == 0 || record.len() == want && want != HEADER_LEN {
            return Ok(taken);
        }
    }
}
