//! A TLS session as data, to move it to another process on reload together with its TCP socket
//! (docs/tls.md): both directions' traffic secrets and sequence numbers, and whatever the peer
//! sent that is not a whole record yet. The process that restores it carries on the same session;
//! the peer notices nothing.

use std::fmt;

use rustls::CipherSuite;
use serde::{Deserialize, Serialize};

use super::keys::{self, Secret};
use super::record::{self, KEY_UPDATE_LEN, MAX_KEY_UPDATES_IN_A_ROW, MAX_WARNING_ALERTS, Session};

/// Everything a [`Session`] is, serialisable (serde). It holds the session's secrets: it never
/// shows them in `Debug` and wipes them when dropped, but the bytes it is serialised into are the
/// caller's to keep safe.
#[derive(Serialize, Deserialize)]
pub struct SessionState {
    suite: u16,
    tx_secret: Secret,
    tx_seq: u64,
    rx_secret: Secret,
    rx_seq: u64,
    partial_record: Vec<u8>,
    partial_handshake: Vec<u8>,
    key_updates_in_a_row: u8,
    warning_alerts: u8,
    sent_close: bool,
    received_close: bool,
}

/// Why a [`SessionState`] cannot be a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// A cipher suite this build does not offer.
    UnknownSuite(u16),
    /// A secret of the wrong length for the suite.
    BadSecret,
    /// Partial input or counters no session could hold.
    Invalid,
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::UnknownSuite(id) => write!(f, "unknown TLS cipher suite {id:#06x}"),
            RestoreError::BadSecret => f.write_str("a TLS traffic secret of the wrong length"),
            RestoreError::Invalid => f.write_str("a TLS session state no session can be in"),
        }
    }
}

impl std::error::Error for RestoreError {}

impl Session {
    /// The session as data. It consumes the session: its keys must never seal again here, since
    /// the process that restores the state goes on with the same sequence numbers.
    pub fn into_state(self) -> SessionState {
        SessionState {
            suite: u16::from(self.suite.common.suite),
            tx_secret: self.tx.secret,
            tx_seq: self.tx.seq,
            rx_secret: self.rx.secret,
            rx_seq: self.rx.seq,
            partial_record: self.partial_record,
            partial_handshake: self.partial_handshake,
            key_updates_in_a_row: self.key_updates_in_a_row,
            warning_alerts: self.warning_alerts,
            sent_close: self.sent_close,
            received_close: self.received_close,
        }
    }

    /// The session a [`SessionState`] describes, checked first (it crossed a process boundary).
    /// Restore a state once: two sessions from one state would reuse nonces.
    pub fn restore(state: SessionState) -> Result<Session, RestoreError> {
        let suite = keys::suite(CipherSuite::from(state.suite))
            .ok_or(RestoreError::UnknownSuite(state.suite))?;
        if !state.tx_secret.fits(suite) || !state.rx_secret.fits(suite) {
            return Err(RestoreError::BadSecret);
        }
        let partial_ok = match record::record_len(&state.partial_record) {
            Ok(Some(len)) => state.partial_record.len() < len,
            Ok(None) => true,
            Err(_) => false,
        };
        if !partial_ok
            || state.partial_handshake.len() >= KEY_UPDATE_LEN
            || state.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW
            || state.warning_alerts > MAX_WARNING_ALERTS
        {
            return Err(RestoreError::Invalid);
        }
        let mut session =
            Session::new(suite, (state.tx_secret, state.tx_seq), (state.rx_secret, state.rx_seq));
        session.partial_record = state.partial_record;
        session.partial_handshake = state.partial_handshake;
        session.key_updates_in_a_row = state.key_updates_in_a_row;
        session.warning_alerts = state.warning_alerts;
        session.sent_close = state.sent_close;
        session.received_close = state.received_close;
        Ok(session)
    }
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("suite", &CipherSuite::from(self.suite))
            .field("tx_seq", &self.tx_seq)
            .field("rx_seq", &self.rx_seq)
            .field("partial_record_len", &self.partial_record.len())
            .field("partial_handshake_len", &self.partial_handshake.len())
            .field("sent_close", &self.sent_close)
            .field("received_close", &self.received_close)
            .finish_non_exhaustive()
    }
}
