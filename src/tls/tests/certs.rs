//! Loading a certificate and key: the good pair loads, and every bad one says what is wrong and
//! where.

use std::fs;

use super::*;
use crate::tls::CertError;

fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, CertError> {
    TlsAcceptor::load(cert, key)
}

fn written(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("write test file");
    path
}

#[test]
fn the_test_pair_loads() {
    load(&testdata("server.pem"), &testdata("server.key")).expect("loads");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let error = load(&testdata("server.pem"), &testdata("other.key")).expect_err("mismatch");
    assert!(matches!(error, CertError::Mismatch { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("other.key") && message.contains("server.pem"), "{message}");
}

#[test]
fn missing_files_are_named() {
    let missing = testdata("missing.pem");
    let error = load(&missing, &testdata("server.key")).expect_err("missing cert");
    assert!(error.to_string().starts_with("tls.cert: "), "{error}");
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let error = load(&testdata("server.pem"), &missing).expect_err("missing key");
    assert!(error.to_string().starts_with("tls.key: "), "{error}");
}

#[test]
fn files_swapped_are_told_apart() {
    let error = load(&testdata("server.key"), &testdata("server.key")).expect_err("key as cert");
    assert!(matches!(error, CertError::NoCertificate(_)), "{error:?}");
    let error = load(&testdata("server.pem"), &testdata("server.pem")).expect_err("cert as key");
    assert!(matches!(error, CertError::NoKey(_)), "{error:?}");
    assert!(error.to_string().contains("BEGIN PRIVATE KEY"), "{error}");
}

#[test]
fn broken_pem_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pem = fs::read_to_string(testdata("server.pem")).expect("fixture");
    let truncated = written(&dir, "truncated.pem", &pem.as_bytes()[..pem.len() / 2]);
    let error = load(&truncated, &testdata("server.key")).expect_err("truncated");
    assert!(matches!(error, CertError::Pem { .. }), "{error:?}");
    let binary = written(&dir, "key.der", &[0x30, 0x82, 0xff, 0xfe, 0x80, 0x81]);
    let error = load(&testdata("server.pem"), &binary).expect_err("binary");
    assert!(error.to_string().contains("not a PEM file"), "{error}");
    let bad_der =
        written(&dir, "bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let error = load(&bad_der, &testdata("server.key")).expect_err("bad DER");
    assert!(matches!(error, CertError::Rejected { .. }), "{error:?}");
}

#[test]
fn a_directory_is_not_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let error = load(dir.path(), &testdata("server.key")).expect_err("directory");
    assert!(error.to_string().contains("not a regular file"), "{error}");
}
