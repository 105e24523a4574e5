//! `[web]`: the web page and its WebSocket (docs/web.md). Kept apart from `mod.rs` like `[tls]`,
//! whose certificate it borrows: with `tls = true` the web listeners speak https/wss with
//! `tls.cert` and `tls.key`, checked by [`Config::check_tls`] like for TLS listeners.

use std::net::SocketAddr;

use toml::de::DeValue;

use super::reader::{Result, Section};
use super::{Metrics, Server, Tls, read_listen};

/// `[web]`: web listeners; none = no web page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Web {
    /// Every worker serves the page and the WebSocket on each of these too; may be empty.
    pub listen: Vec<SocketAddr>,
    /// https/wss with the `[tls]` certificate and key, instead of http/ws.
    pub tls: bool,
}

pub(super) fn read_web(
    root: &Section<'_>,
    server: &Server,
    tls: &Tls,
    metrics: &Metrics,
) -> Result<Web> {
    let s = root.table("web", &["listen", "tls"])?;
    let listen = match s.get("listen") {
        Some(value) if matches!(value.get_ref(), DeValue::Array(items) if items.is_empty()) => {
            Vec::new()
        }
        _ => read_listen(&s, Vec::new())?,
    };
    for &addr in listen.iter().filter(|addr| addr.port() != 0) {
        let other = if server.listen.contains(&addr) {
            "server.listen"
        } else if tls.listen.contains(&addr) {
            "tls.listen"
        } else if metrics.listen == Some(addr) {
            "metrics.listen"
        } else {
            continue;
        };
        return Err(s.invalid(
            "listen",
            s.span_of(&["listen"]),
            format!("{addr} is also in {other}: the web page needs an address of its own"),
        ));
    }
    Ok(Web { listen, tls: s.bool("tls", false)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_error, parse};
    use crate::listener::Kind;

    #[test]
    fn no_listener_by_default() {
        let c = parse("");
        assert_eq!(c.web, Web::default());
        assert_eq!(parse("[web]\nlisten = []\ntls = true\n").web.listen, Vec::new());
        // Without web listeners, `tls = true` asks for no certificate.
        let c = parse("[web]\ntls = true\n[tls]\ncert = \"/nonexistent/c.pem\"\n");
        assert!(c.check_tls().expect("nothing to check").is_none());
    }

    #[test]
    fn listeners_have_their_kind() {
        let c = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\nlisten = [\"127.0.0.1:2\"]\n\
             [web]\nlisten = [\"127.0.0.1:3\", \"[::1]:0\"]\n",
        );
        let kinds: Vec<Kind> = c.listeners().into_iter().map(|(_, k)| k).collect();
        assert_eq!(kinds, [Kind::Plain, Kind::Tls, Kind::Web, Kind::Web]);
        let c = parse("[web]\nlisten = [\"127.0.0.1:3\"]\ntls = true\n");
        assert_eq!(c.listeners()[1], ("127.0.0.1:3".parse().unwrap(), Kind::WebTls));
    }

    #[test]
    fn an_address_of_its_own() {
        let server = "[server]\nlisten = [\"127.0.0.1:1\"]\n[web]\nlisten = [\"127.0.0.1:1\"]\n";
        assert_error(server, "4:10", &["web.listen: 127.0.0.1:1 is also in server.listen"]);
        let tls = "[tls]\nlisten = [\"127.0.0.1:2\"]\n[web]\nlisten = [\"127.0.0.1:2\"]\n";
        assert_error(tls, "4:10", &["is also in tls.listen"]);
        let metrics = "[metrics]\nlisten = \"127.0.0.1:3\"\n[web]\nlisten = [\"127.0.0.1:3\"]\n";
        assert_error(metrics, "4:10", &["is also in metrics.listen"]);
        parse("[server]\nlisten = [\"127.0.0.1:0\"]\n[web]\nlisten = [\"127.0.0.1:0\"]\n");
    }

    #[test]
    fn bad_values_and_the_certificate() {
        assert_error("[web]\ntls = \"yes\"\n", "2:7", &["web.tls"]);
        assert_error("[web]\nport = 1\n", "2:1", &["unknown key 'port' in [web]"]);
        let c = parse(
            "[web]\nlisten = [\"127.0.0.1:0\"]\ntls = true\n[tls]\ncert = \"/nonexistent/c.pem\"\n",
        );
        let e = c.check_tls().expect_err("a missing certificate").to_string();
        assert!(e.starts_with("tls.cert"), "{e}");
    }
}
