//! A throwaway PKI for the TLS tests, made with the `openssl` command: a CA, and a server
//! certificate it signed for `DNS:localhost` and `IP:127.0.0.1` (ECDSA P-256, valid one day), in
//! a temporary directory that goes with the [`Pki`]. Two `Pki`s have unrelated CAs (each has its
//! own name too), so one's CA does not trust the other's certificate.
//!
//! openssl is required: without it these tests fail (CI installs it in `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

/// A CA and a server certificate with its key, as PEM files.
pub struct Pki {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (issued by the CA).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    _dir: TempDir,
}

impl Pki {
    /// Makes a new CA and a server certificate for localhost and 127.0.0.1.
    pub fn new() -> Pki {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        // A name of its own, so two CAs never look like one (an unrelated CA with the same
        // name gives a different verification error).
        let ca_name = format!(
            "/CN=chatd test CA {} {}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        openssl(
            dir.path(),
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -keyout ca.key \
             -out ca.pem -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign -subj",
            &ca_name,
        );
        openssl(
            dir.path(),
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
             -out server.csr -subj",
            "/CN=localhost",
        );
        std::fs::write(
            path("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            dir.path(),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
             -extfile server.ext -out",
            "server.pem",
        );
        Pki { ca: path("ca.pem"), cert: path("server.pem"), key: path("server.key"), _dir: dir }
    }
}

/// `openssl ARGS… LAST` in `dir` (`LAST` may hold spaces); panics with its stderr if it fails
/// or is missing.
fn openssl(dir: &Path, args: &str, last: &str) {
    let args: Vec<&str> = args.split_whitespace().chain([last]).collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): the TLS tests need it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
