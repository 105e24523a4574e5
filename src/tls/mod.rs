//! TLS 1.3 for client connections, in a form that survives a reload (docs/tls.md).
//!
//! rustls does the handshake ([`Handshake`], fed by the event loop without blocking, with the
//! certificate of a [`TlsAcceptor`]); then the record state is taken out of rustls into a
//! [`Session`], which seals and opens records with the cipher suite's own primitives and follows
//! the client's KeyUpdates. A session turns into a [`SessionState`] (serde) and back, so a worker
//! can hand it to its successor with the TCP socket and the successor carries on the same TLS
//! session.

mod certs;
mod handoff;
mod handshake;
mod keys;
mod record;

pub use certs::{CertError, TlsAcceptor};
pub use handoff::{RestoreError, SessionState};
pub use handshake::{Handshake, HandshakeError, Progress};
pub use record::{MAX_PLAINTEXT, RecordError, Session, Status};

#[cfg(test)]
mod tests;
