//! What `chatd client --tls` trusts, and what it says when the server is not trusted.
//!
//! The server's certificate is checked against one set of roots: the PEM bundle given with
//! `--ca FILE` alone, or else the system's store, read by `rustls-native-certs` (on Debian
//! `/etc/ssl/certs/ca-certificates.crt`; `SSL_CERT_FILE` and `SSL_CERT_DIR` point it
//! elsewhere). The name checked is the host the user typed: a DNS name, or an IP address
//! matched against the certificate's IP SANs. `--insecure` accepts any certificate but still
//! checks the handshake's signatures, so the session is encrypted, just not authenticated.
//! Only TLS 1.3 is offered, what chatd speaks (docs/tls.md).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Which certificates the client accepts from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Those issued by a CA in this PEM file (`--ca FILE`), and no other.
    Ca(PathBuf),
    /// Those issued by a CA of the system's store.
    System,
    /// Any (`--insecure`).
    Insecure,
}

/// Why the client cannot set TLS up at all (before connecting).
#[derive(Debug)]
pub enum SetupError {
    /// The `--ca` file cannot be read, holds no certificate, or one is not usable.
    Ca { path: PathBuf, reason: String },
    /// The system's store gave no usable certificate.
    NoSystemRoots(String),
    /// The host cannot be checked against a certificate.
    ServerName(String),
    /// rustls refused the configuration (cannot happen with the ring provider's TLS 1.3).
    Config(rustls::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Ca { path, reason } => write!(f, "--ca {}: {reason}", path.display()),
            SetupError::NoSystemRoots(reason) => write!(
                f,
                "no trusted certificate in the system's store ({reason}); \
                 give the server's CA with --ca FILE"
            ),
            SetupError::ServerName(host) => {
                write!(f, "{host:?} is not a host name or IP address a certificate can name")
            }
            SetupError::Config(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

/// Makes the TLS sessions of one client run: the configuration and the name to verify.
#[derive(Debug, Clone)]
pub(super) struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    /// The connector for `host` (as typed: a name, an IPv4 address or a bare IPv6 address).
    pub(super) fn new(trust: &Trust, host: &str) -> Result<TlsConnector, SetupError> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| SetupError::ServerName(host.to_owned()))?;
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(SetupError::Config)?;
        let config = match trust {
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            Trust::Ca(path) => {
                builder.with_root_certificates(ca_roots(path)?).with_no_client_auth()
            }
            Trust::System => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
        };
        Ok(TlsConnector { config: Arc::new(config), server_name })
    }

    /// A new client session, its handshake not started yet.
    pub(super) fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// The roots from a `--ca` PEM file: every certificate in it must be usable.
fn ca_roots(path: &PathBuf) -> Result<RootCertStore, SetupError> {
    let failed = |reason: String| SetupError::Ca { path: path.clone(), reason };
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| failed(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(failed(
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| failed(format!("certificate {} not usable: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// The system's roots; those it cannot parse are skipped, as a browser would.
fn system_roots() -> Result<RootCertStore, SetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "none found".into(),
        };
        return Err(SetupError::NoSystemRoots(reason));
    }
    Ok(roots)
}

/// A failed handshake or session in words for the user, with rustls' own reason after it:
/// `certificate not trusted (invalid peer certificate: UnknownIssuer)`.
pub(super) fn describe(e: &rustls::Error) -> String {
    let what = match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "certificate not valid for this host",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate expired",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "certificate not valid yet",
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            "certificate not trusted"
        }
        rustls::Error::AlertReceived(_) => "the server ended the session",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server's answer is not TLS 1.3 (a plain port?)"
        }
        rustls::Error::PeerIncompatible(_) => "the server does not speak TLS 1.3",
        _ => "protocol error",
    };
    format!("{what} ({e})")
}

/// `--insecure`: every certificate is taken as the server's, whoever issued it and whatever it
/// names; the handshake's signatures are still checked against it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::AlertDescription;

    #[test]
    fn failures_are_described_in_words_with_the_reason() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            describe(&unknown),
            "certificate not trusted (invalid peer certificate: UnknownIssuer)"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(describe(&name).starts_with("certificate not valid for this host ("));
        let alert = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert!(describe(&alert).starts_with("the server ended the session ("));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsConnector::new(&Trust::Ca(empty.clone()), "localhost").unwrap_err();
        assert!(err.to_string().contains("no certificate in it"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = TlsConnector::new(&Trust::Ca(missing), "localhost").unwrap_err();
        assert!(err.to_string().starts_with("--ca "), "{err}");
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        for host in ["localhost", "127.0.0.1", "::1", "chat.example.org"] {
            assert!(TlsConnector::new(&Trust::Insecure, host).is_ok(), "{host}");
        }
        assert!(TlsConnector::new(&Trust::Insecure, "bad host").is_err());
    }
}
