//! The server's certificate chain and private key, read from PEM files and checked to belong
//! together, and the rustls configuration built from them: TLS 1.3 only, no session tickets, no
//! resumption, no early data (docs/tls.md). Loading is also the check `check-config` and a reload
//! run, so every way a pair can be wrong gets a message naming the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{InconsistentKeys, ServerConfig};
use zeroize::Zeroizing;

use super::keys::SUITES;

/// What accepts TLS clients: the rustls server configuration for one certificate and key.
/// Cheap to share; a reload builds a new one and new handshakes use it.
#[derive(Debug, Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

/// Why a certificate and key cannot be used.
#[derive(Debug)]
pub enum CertError {
    /// The file cannot be read (missing, unreadable, not a regular file, too large).
    Read { file: &'static str, reason: String },
    /// The file is not well-formed PEM.
    Pem { file: &'static str, path: PathBuf, reason: String },
    /// The certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    NoKey(PathBuf),
    /// rustls refused the certificate or the key (unsupported key type, undecodable DER).
    Rejected { path: PathBuf, reason: String },
    /// The key is not the certificate's.
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Read { file, reason } => write!(f, "tls.{file}: {reason}"),
            CertError::Pem { file, path, reason } => {
                write!(f, "tls.{file} {}: not valid PEM: {reason}", path.display())
            }
            CertError::NoCertificate(path) => write!(
                f,
                "tls.cert {}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                path.display()
            ),
            CertError::NoKey(path) => write!(
                f,
                "tls.key {}: no private key in it (expected PEM \"BEGIN PRIVATE KEY\", \
                 \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
                path.display()
            ),
            CertError::Rejected { path, reason } => write!(f, "{}: {reason}", path.display()),
            CertError::Mismatch { cert, key } => write!(
                f,
                "tls.key {} is not the private key of the certificate in tls.cert {}",
                key.display(),
                cert.display()
            ),
        }
    }
}

impl std::error::Error for CertError {}

impl TlsAcceptor {
    /// Reads the certificate chain (end-entity first, as certbot's `fullchain.pem`) and the
    /// private key (PKCS#8, PKCS#1 or SEC1), and checks that the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, CertError> {
        let cert_pem = read("cert", cert)?;
        let key_pem = Zeroizing::new(read("key", key)?);
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("cert", cert, e))?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate(cert.to_owned()));
        }
        let private_key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
                pem::Error::NoItemsFound => CertError::NoKey(key.to_owned()),
                e => pem_error("key", key, e),
            })?;
        let config = server_config(chain, private_key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                CertError::Mismatch { cert: cert.to_owned(), key: key.to_owned() }
            }
            rustls::Error::InvalidCertificate(reason) => CertError::Rejected {
                path: cert.to_owned(),
                reason: format!("unusable certificate: {reason:?}"),
            },
            rustls::Error::InconsistentKeys(InconsistentKeys::Unknown) => CertError::Rejected {
                path: key.to_owned(),
                reason: "cannot tell whether this key is the certificate's".to_owned(),
            },
            e => CertError::Rejected { path: key.to_owned(), reason: format!("unusable key: {e}") },
        })?;
        Ok(TlsAcceptor { config: Arc::new(config) })
    }

    pub(super) fn config(&self) -> &ServerConfig {
        &self.config
    }
}

/// The rustls configuration chatd serves with.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = CryptoProvider { cipher_suites: SUITES.to_vec(), ..ring::default_provider() };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        // Checks that the key is the certificate's.
        .with_single_cert(chain, key)?;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    // The record layer leaves rustls after the handshake (`Handshake::finish`).
    config.enable_secret_extraction = true;
    Ok(config)
}

/// A PEM file's text, read like the config file: only a regular file of bounded size, so a FIFO
/// or a device named by mistake cannot hang a reload.
fn read(file: &'static str, path: &Path) -> Result<String, CertError> {
    crate::config::read_file(path).map_err(|e| CertError::Read {
        file,
        reason: if e.is_syntax() {
            format!("{}: not a PEM file (binary? DER must be converted to PEM)", path.display())
        } else {
            e.to_string()
        },
    })
}

fn pem_error(file: &'static str, path: &Path, error: pem::Error) -> CertError {
    let reason = match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a section does not end with {}", String::from_utf8_lossy(&end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed section start {}", String::from_utf8_lossy(&line))
        }
        pem::Error::Base64Decode(e) => format!("bad base64: {e}"),
        e => e.to_string(),
    };
    CertError::Pem { file, path: path.to_owned(), reason }
}
