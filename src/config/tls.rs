//! `[tls]`: the TLS listeners and their certificate (docs/tls.md). Kept apart from `mod.rs`
//! because it is the one section whose check reaches outside the file: with listen addresses,
//! the certificate and key are read and checked ([`Config::check_tls`]) by `check-config`,
//! `serve` and `reload`, so a bad pair is reported like any config error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use super::reader::{Result, Section, quoted};
use super::{Config, Metrics, Server, duration, read_listen};
use crate::listener::Kind;
use crate::tls::{CertError, TlsAcceptor};

/// `[tls]`: TLS listeners; none = no TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Every worker listens on each of these too, speaking TLS; may be empty.
    pub listen: Vec<SocketAddr>,
    /// The certificate chain, PEM, end-entity first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
    /// A connection that has not finished its handshake by then is closed.
    pub handshake_timeout: Duration,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            listen: Vec::new(),
            cert: PathBuf::from("/etc/chatd/tls/fullchain.pem"),
            key: PathBuf::from("/etc/chatd/tls/privkey.pem"),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Every listen address with the kind of connection it takes, in the order a worker slot
    /// holds its listeners: `server.listen`, then `tls.listen`, then `web.listen`.
    pub fn listeners(&self) -> Vec<(SocketAddr, Kind)> {
        let plain = self.server.listen.iter().map(|&a| (a, Kind::Plain));
        let tls = self.tls.listen.iter().map(|&a| (a, Kind::Tls));
        let web_kind = if self.web.tls { Kind::WebTls } else { Kind::Web };
        let web = self.web.listen.iter().map(|&a| (a, web_kind));
        plain.chain(tls).chain(web).collect()
    }

    /// The certificate and key, read and checked, when some listener speaks TLS (`tls.listen`,
    /// or `web.listen` with `web.tls`); `None` when none does (the files are then not looked
    /// at).
    pub fn check_tls(&self) -> std::result::Result<Option<TlsAcceptor>, CertError> {
        let web_tls = self.web.tls && !self.web.listen.is_empty();
        if self.tls.listen.is_empty() && !web_tls {
            return Ok(None);
        }
        TlsAcceptor::load(&self.tls.cert, &self.tls.key).map(Some)
    }
}

pub(super) fn read_tls(root: &Section<'_>, server: &Server, metrics: &Metrics) -> Result<Tls> {
    let s = root.table("tls", &["listen", "cert", "key", "handshake_timeout"])?;
    let d = Tls::default();
    let listen = match s.get("listen") {
        Some(value) if matches!(value.get_ref(), DeValue::Array(items) if items.is_empty()) => {
            Vec::new()
        }
        _ => read_listen(&s, Vec::new())?,
    };
    for &addr in listen.iter().filter(|addr| addr.port() != 0) {
        let other = if server.listen.contains(&addr) {
            "server.listen"
        } else if metrics.listen == Some(addr) {
            "metrics.listen"
        } else {
            continue;
        };
        return Err(s.invalid(
            "listen",
            s.span_of(&["listen"]),
            format!("{addr} is also in {other}: TLS needs an address of its own"),
        ));
    }
    let path = |v: &str| {
        if v.is_empty() || v.contains('\0') {
            return Err(format!("expected a file path, found {}", quoted(v)));
        }
        Ok(PathBuf::from(v))
    };
    Ok(Tls {
        listen,
        cert: s.parsed("cert", d.cert, path)?,
        key: s.parsed("key", d.key, path)?,
        handshake_timeout: s.duration("handshake_timeout", d.handshake_timeout, |v| {
            let timeout = duration::parse(v)?;
            if timeout.is_zero() {
                return Err(format!(
                    r#"expected a duration longer than 0 like "10s", found {}"#,
                    quoted(v)
                ));
            }
            Ok(timeout)
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_error, parse};

    #[test]
    fn no_listener_by_default_and_none_is_fine() {
        let c = parse("");
        assert_eq!(c.tls, Tls::default());
        assert!(c.check_tls().expect("nothing to check").is_none());
        assert_eq!(parse("[tls]\nlisten = []\n").tls, Tls::default());
        assert_eq!(c.listeners(), vec![("0.0.0.0:9999".parse().unwrap(), Kind::Plain)]);
    }

    #[test]
    fn every_key() {
        let c = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\nlisten = [\"127.0.0.1:2\", \"[::1]:0\"]\n\
             cert = \"/c.pem\"\nkey = \"/k.pem\"\nhandshake_timeout = \"3s\"\n",
        );
        assert_eq!(c.tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/k.pem"));
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(3));
        let kinds: Vec<Kind> = c.listeners().into_iter().map(|(_, k)| k).collect();
        assert_eq!(kinds, [Kind::Plain, Kind::Tls, Kind::Tls]);
    }

    #[test]
    fn an_address_of_its_own() {
        let both = "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\nlisten = [\"127.0.0.1:1\"]\n";
        assert_error(both, "4:10", &["tls.listen: 127.0.0.1:1 is also in server.listen"]);
        let metrics = "[metrics]\nlisten = \"127.0.0.1:2\"\n[tls]\nlisten = [\"127.0.0.1:2\"]\n";
        assert_error(metrics, "4:10", &["is also in metrics.listen"]);
        // Port 0 is a free port of its own each time.
        parse("[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\n");
    }

    #[test]
    fn bad_values() {
        assert_error("[tls]\nlisten = [\"host:1\"]\n", "2:11", &["tls.listen", "IP:PORT"]);
        assert_error("[tls]\nhandshake_timeout = \"0s\"\n", "2:21", &["longer than 0"]);
        assert_error("[tls]\ncert = \"\"\n", "2:8", &["tls.cert", "file path"]);
        assert_error("[tls]\nciphers = 1\n", "2:1", &["unknown key 'ciphers' in [tls]"]);
    }

    #[test]
    fn the_pair_is_checked_only_with_listeners() {
        let c = parse("[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"/nonexistent/c.pem\"\n");
        let e = c.check_tls().expect_err("a missing certificate").to_string();
        assert!(e.starts_with("tls.cert"), "{e}");
    }
}
