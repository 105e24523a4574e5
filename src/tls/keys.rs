//! Traffic secrets and what TLS 1.3 derives from them (RFC 8446 §7.1–7.3): the record key and IV
//! of each direction and, on a KeyUpdate, the next secret. chatd keeps the secrets itself so that
//! a session can move to another process, but every derivation and every record goes through the
//! cipher suite's own HKDF and AEAD from the rustls provider: chatd implements no cryptography.

use std::{fmt, mem};

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, NONCE_LEN,
    OutboundChunks, OutboundPlainMessage,
};
use rustls::crypto::ring::cipher_suite;
use rustls::crypto::tls13::{HkdfExpander, OkmBlock, expand};
use rustls::{CipherSuite, ConnectionTrafficSecrets, ContentType, ProtocolVersion};
use rustls::{SupportedCipherSuite, Tls13CipherSuite};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// The suites chatd offers. TLS_AES_128_GCM_SHA256 is left out: rustls 0.23's public API can
/// only build a 32-byte [`AeadKey`], so a 16-byte key could not be derived again after a
/// KeyUpdate or a hand-off (docs/tls.md).
pub(crate) static SUITES: &[SupportedCipherSuite] =
    &[cipher_suite::TLS13_AES_256_GCM_SHA384, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];

/// The key length every suite in [`SUITES`] uses.
const KEY_LEN: usize = 32;

/// The TLS 1.3 suite of [`SUITES`] named `id`.
pub(crate) fn suite(id: CipherSuite) -> Option<&'static Tls13CipherSuite> {
    SUITES.iter().filter_map(SupportedCipherSuite::tls13).find(|s| s.common.suite == id)
}

/// A traffic secret (`client/server_application_traffic_secret_N`): never printed, wiped from
/// memory when dropped.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    pub(crate) fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    /// Whether this can be a secret of `suite`: as long as its hash output.
    pub(crate) fn fits(&self, suite: &Tls13CipherSuite) -> bool {
        self.0.len() == suite.common.hash_provider.output_len()
    }

    fn expander(&self, suite: &Tls13CipherSuite) -> Box<dyn HkdfExpander> {
        suite.hkdf_provider.expander_for_okm(&OkmBlock::new(&self.0))
    }

    /// `application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length)`
    pub(crate) fn next(&self, suite: &Tls13CipherSuite) -> Secret {
        let expander = self.expander(suite);
        let len = expander.hash_len();
        let okm = with_label(b"traffic upd", len, |info| expander.expand_block(info));
        Secret::new(okm.as_ref())
    }

    /// The record protection key and IV (`"key"` and `"iv"` labels).
    fn record_keys(&self, suite: &Tls13CipherSuite) -> (AeadKey, Iv) {
        let expander = self.expander(suite);
        let key: AeadKey = with_label(b"key", KEY_LEN, |info| expand(expander.as_ref(), info));
        let iv: Iv = with_label(b"iv", NONCE_LEN, |info| expand(expander.as_ref(), info));
        (key, iv)
    }

    /// Whether this secret gives the key and IV rustls extracted: proof that the secret logged
    /// during the handshake belongs to this connection.
    pub(crate) fn gives(
        &self,
        suite: &Tls13CipherSuite,
        extracted: &ConnectionTrafficSecrets,
    ) -> bool {
        let (key, iv) = match extracted {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return false,
        };
        let (ours, our_iv) = self.record_keys(suite);
        ours.as_ref() == key.as_ref() && our_iv.as_ref() == iv.as_ref()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Calls `f` with the `HkdfLabel` info of RFC 8446 §7.1 for `label`, an empty context and an
/// output of `len` bytes.
fn with_label<T>(label: &[u8], len: usize, f: impl FnOnce(&[&[u8]]) -> T) -> T {
    const PREFIX: &[u8] = b"tls13 ";
    // Labels are short constants and outputs at most a hash long, so the casts cannot truncate.
    let len = (len as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    f(&[&len, &label_len, PREFIX, label, &[0]])
}

/// The sending half of a session: the current secret, the next record's sequence number and,
/// while the connection is busy, the suite's encrypter for them. The encrypter (the expanded AEAD
/// key) is most of a session's memory, so an idle session lets it go ([`Sending::release`]) and
/// derives it again from the secret for the next record.
pub(crate) struct Sending {
    suite: &'static Tls13CipherSuite,
    pub(crate) secret: Secret,
    pub(crate) seq: u64,
    encrypter: Option<Box<dyn MessageEncrypter>>,
    /// Whether a record was sealed since the last [`Sending::release`].
    used: bool,
}

impl Sending {
    pub(crate) fn new(suite: &'static Tls13CipherSuite, secret: Secret, seq: u64) -> Sending {
        Sending { suite, secret, seq, encrypter: None, used: false }
    }

    /// Appends one record carrying `payload` (at most 2^14 bytes) as content `typ` to `out`.
    pub(crate) fn seal(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        let next = self.seq.checked_add(1).ok_or(rustls::Error::EncryptError)?;
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let (suite, secret) = (self.suite, &self.secret);
        let encrypter = self.encrypter.get_or_insert_with(|| {
            let (key, iv) = secret.record_keys(suite);
            suite.aead_alg.encrypter(key, iv)
        });
        let record = encrypter.encrypt(message, self.seq)?;
        self.seq = next;
        self.used = true;
        out.extend_from_slice(&record.encode());
        Ok(())
    }

    /// Moves to the next secret (after sending a KeyUpdate); sequence numbers start again at 0.
    pub(crate) fn update(&mut self) {
        self.secret = self.secret.next(self.suite);
        self.seq = 0;
        self.encrypter = None;
    }

    /// Drops the encrypter if nothing was sealed since the last call: called once per quiet
    /// tick, so a busy session keeps its key and an idle one keeps only its secret.
    pub(crate) fn release(&mut self) {
        if !mem::take(&mut self.used) {
            self.encrypter = None;
        }
    }

    /// Whether the encrypter is held (for tests).
    #[cfg(test)]
    pub(crate) fn has_key(&self) -> bool {
        self.encrypter.is_some()
    }
}

/// The receiving half of a session, like [`Sending`].
pub(crate) struct Receiving {
    suite: &'static Tls13CipherSuite,
    pub(crate) secret: Secret,
    pub(crate) seq: u64,
    decrypter: Option<Box<dyn MessageDecrypter>>,
    /// Whether a record was opened since the last [`Receiving::release`].
    used: bool,
}

impl Receiving {
    pub(crate) fn new(suite: &'static Tls13CipherSuite, secret: Secret, seq: u64) -> Receiving {
        Receiving { suite, secret, seq, decrypter: None, used: false }
    }

    /// Decrypts a record's body in place; returns the inner content type and the length of the
    /// plaintext, which starts at `body[0]`.
    pub(crate) fn open(&mut self, body: &mut [u8]) -> Result<(ContentType, usize), rustls::Error> {
        let next = self.seq.checked_add(1).ok_or(rustls::Error::DecryptError)?;
        let message =
            InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body);
        let (suite, secret) = (self.suite, &self.secret);
        let decrypter = self.decrypter.get_or_insert_with(|| {
            let (key, iv) = secret.record_keys(suite);
            suite.aead_alg.decrypter(key, iv)
        });
        // The provider decrypts in place and only shortens the payload, so the plaintext is the
        // front of `body`.
        let plain = decrypter.decrypt(message, self.seq)?;
        self.seq = next;
        self.used = true;
        Ok((plain.typ, plain.payload.len()))
    }

    /// Moves to the next secret (after receiving a KeyUpdate).
    pub(crate) fn update(&mut self) {
        self.secret = self.secret.next(self.suite);
        self.seq = 0;
        self.decrypter = None;
    }

    /// Like [`Sending::release`].
    pub(crate) fn release(&mut self) {
        if !mem::take(&mut self.used) {
            self.decrypter = None;
        }
    }

    /// Whether the decrypter is held (for tests).
    #[cfg(test)]
    pub(crate) fn has_key(&self) -> bool {
        self.decrypter.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_suite_has_the_key_length_derived_here() {
        for suite in SUITES {
            let suite = suite.tls13().expect("TLS 1.3 suite");
            assert_eq!(suite.aead_alg.key_len(), KEY_LEN, "{:?}", suite.common.suite);
        }
    }

    /// The client's first application traffic secret of RFC 8448 §3 and what HKDF-Expand-Label
    /// gives for it, as computed by `openssl kdf` (its 16-byte "key" is the RFC's AES-128 key).
    #[test]
    fn labels_derive_what_openssl_derives() {
        let secret =
            Secret::new(&hex("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"));
        let suite = suite(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256).expect("suite");
        let (key, iv) = secret.record_keys(suite);
        assert_eq!(
            key.as_ref(),
            hex("c8afd24f48952725381a54085e8d8e3856d8d89e3019243b30a9db54809a3732").as_slice()
        );
        assert_eq!(iv.as_ref(), hex("5b78923dee08579033e523d9").as_slice());
        assert_eq!(
            secret.next(suite).0,
            hex("fcdfcc72725aaee48bf64e4fd8b749cdbdbab39d90da0b26e2245ca6ea167207")
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::new(&[0xab; 32]);
        let shown = format!("{secret:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"), "{shown}");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
