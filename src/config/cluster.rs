//! `[cluster]`: one room across several hosts over NATS JetStream (docs/cluster.md).
//!
//! Kept apart from the single-host settings because every value here names something outside
//! this host: NATS servers, a JetStream stream shared by every host of the room, this host's name
//! among them. The room and the node become parts of NATS subjects and of the stream's name,
//! so they are checked as subject tokens here rather than failing later at the server.

use std::time::Duration;

use super::duration;
use super::reader::{Result, Section, quoted};

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `false`: this host alone is the room, and nothing else here is used.
    pub enabled: bool,
    /// NATS servers to connect to, any of them will do; never empty.
    pub nats: Vec<String>,
    /// The room's name: the stream is `CHATD_<room>`, its subjects `chatd.<room>.>`.
    pub room: String,
    /// This host's unique name in the cluster; `""` in the file = the host name up to its
    /// first dot.
    pub node: String,
    /// Replicas of the stream when chatd creates it.
    pub replicas: usize,
    /// A host silent this long in the stream is declared gone; its clients leave.
    pub host_timeout: Duration,
    /// NATS unreachable this long: the host's clients are told their lines are held.
    pub outage_notice: Duration,
    /// NATS unreachable this long: the host's clients are disconnected.
    pub outage_timeout: Duration,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            enabled: false,
            nats: vec!["nats://127.0.0.1:4222".to_owned()],
            room: "main".to_owned(),
            node: host_node(),
            replicas: 3,
            host_timeout: Duration::from_secs(15),
            outage_notice: Duration::from_secs(3),
            outage_timeout: Duration::from_secs(60),
        }
    }
}

/// The longest room or node name: both travel in every subject and in the stream's name.
const MAX_NAME: usize = 64;
/// JetStream keeps at most 5 replicas of a stream.
const MAX_REPLICAS: usize = 5;
/// Hosts beat into the stream five times per `host_timeout`; below this the beats alone would
/// be a steady load on the stream and a short stall would count as a lost host.
const MIN_HOST_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest chat line in cluster mode: every line travels as one NATS message, and NATS
/// refuses messages past its `max_payload` (1 MB by default) at every retry, which would hold
/// up everything the host publishes after it. Half of that leaves room for the event around
/// the line and for a server configured lower.
pub const MAX_CLUSTER_LINE_BYTES: usize = 512 * 1024;

/// `[cluster]`; `max_line_bytes` is `chat.max_line_bytes`, bounded in cluster mode.
pub(super) fn read_cluster(root: &Section<'_>, max_line_bytes: usize) -> Result<Cluster> {
    let s = root.table(
        "cluster",
        &[
            "enabled",
            "nats",
            "room",
            "node",
            "replicas",
            "host_timeout",
            "outage_notice",
            "outage_timeout",
        ],
    )?;
    let d = Cluster::default();
    let enabled = s.bool("enabled", d.enabled)?;
    let nats = read_nats(&s, d.nats)?;
    let room = s.parsed("room", d.room, |v| token(v, "room"))?;
    let node = s.parsed("node", d.node.clone(), |v| {
        if v.is_empty() { Ok(d.node.clone()) } else { token(v, "node") }
    })?;
    if enabled && node.is_empty() {
        return Err(s.invalid(
            "node",
            s.span_of(&["node", "enabled"]),
            "the host name cannot serve as the node's name (it is not 1 to 64 letters, digits, \
             '_' or '-'): set node",
        ));
    }
    if enabled && max_line_bytes > MAX_CLUSTER_LINE_BYTES {
        return Err(s.invalid(
            "enabled",
            s.span_of(&["enabled"]),
            format!(
                "chat.max_line_bytes ({max_line_bytes}) is more than {MAX_CLUSTER_LINE_BYTES} \
                 bytes, too long for a line to travel in one NATS message"
            ),
        ));
    }
    let replicas = s.int("replicas", d.replicas, 1..=MAX_REPLICAS)?;
    let host_timeout = s.duration("host_timeout", d.host_timeout, |v| {
        let timeout = duration::parse(v)?;
        if timeout < MIN_HOST_TIMEOUT {
            return Err(format!(
                "must be at least 3s (a shorter stall of a host would count as its loss), found {}",
                quoted(v)
            ));
        }
        Ok(timeout)
    })?;
    let positive = |v: &str| {
        let d = duration::parse(v)?;
        if d.is_zero() {
            return Err(format!(
                r#"expected a duration longer than 0 like "3s", found {}"#,
                quoted(v)
            ));
        }
        Ok(d)
    };
    let outage_notice = s.duration("outage_notice", d.outage_notice, positive)?;
    let outage_timeout = s.duration("outage_timeout", d.outage_timeout, positive)?;
    if outage_timeout <= outage_notice {
        return Err(s.invalid(
            "outage_timeout",
            s.span_of(&["outage_timeout", "outage_notice"]),
            format!(
                "{} is not longer than cluster.outage_notice ({}): clients are told their lines \
                 are held before they are given up on",
                duration::display(outage_timeout),
                duration::display(outage_notice)
            ),
        ));
    }
    Ok(Cluster { enabled, nats, room, node, replicas, host_timeout, outage_notice, outage_timeout })
}

fn read_nats(s: &Section<'_>, default: Vec<String>) -> Result<Vec<String>> {
    use toml::de::DeValue;
    const EXPECTED: &str = r#"an array of NATS URLs like ["nats://10.0.0.1:4222"]"#;
    let Some(value) = s.get("nats") else { return Ok(default) };
    let DeValue::Array(items) = value.get_ref() else {
        return Err(s.expected("nats", value, EXPECTED));
    };
    if items.is_empty() {
        return Err(s.invalid(
            "nats",
            value.span(),
            format!("must list at least one server: {EXPECTED}"),
        ));
    }
    let mut urls: Vec<String> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let DeValue::String(text) = item.get_ref() else {
            return Err(s.expected("nats", item, "a string"));
        };
        let url = nats_url(text).map_err(|problem| s.invalid("nats", item.span(), problem))?;
        if urls.contains(&url) {
            return Err(s.invalid(
                "nats",
                item.span(),
                format!("{} is listed twice", quoted(text)),
            ));
        }
        urls.push(url);
    }
    Ok(urls)
}

/// `nats://HOST[:PORT]` or `tls://HOST[:PORT]`, with `USER:PASSWORD@` allowed before the host;
/// IPv6 in brackets. Nothing after the port: a path or query would be silently ignored.
fn nats_url(text: &str) -> std::result::Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            r#"expected a NATS URL like "nats://10.0.0.1:4222" or "tls://nats.example:4222", \
               found {} ({why})"#,
            quoted(text)
        ))
    };
    let Some((scheme, rest)) = text.split_once("://") else { return bad("no scheme") };
    if scheme != "nats" && scheme != "tls" {
        return bad("the scheme is nats or tls");
    }
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    if host_port.contains(['/', '?', '#'])
        || text.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("nothing may follow the port");
    }
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else { return bad("no closing bracket") };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in the brackets");
        }
        match (after, after.strip_prefix(':')) {
            ("", _) => (ip, None),
            (_, Some(port)) => (ip, Some(port)),
            _ => return bad("nothing may follow the port"),
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(port) = port {
        if port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return bad("the port is a number from 1 to 65535");
        }
    }
    Ok(text.to_owned())
}

/// A name that goes into NATS subjects and the stream's name: letters, digits, `_`, `-`.
fn token(v: &str, what: &str) -> std::result::Result<String, String> {
    if is_token(v) {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "expected a {what} name of 1 to {MAX_NAME} ASCII letters, digits, '_' or '-' (it is \
             part of NATS subjects), found {}",
            quoted(v)
        ))
    }
}

fn is_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_NAME
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The host name up to its first dot, or `""` when that is no usable node name.
fn host_node() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let short = name.trim().split('.').next().unwrap_or_default();
    if is_token(short) { short.to_owned() } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, parse};
    use super::*;

    #[test]
    fn defaults_and_every_key() {
        let c = parse("").cluster;
        assert!(!c.enabled);
        assert_eq!(c.nats, ["nats://127.0.0.1:4222"]);
        assert_eq!((c.room.as_str(), c.replicas), ("main", 3));
        assert_eq!(c.node, host_node());
        let c = parse(
            r#"[cluster]
enabled = true
nats = ["nats://10.0.0.1:4222", "tls://user:pw@nats.example", "nats://[::1]:4223"]
room = "lobby-2"
node = "web_1"
replicas = 5
host_timeout = "20s"
outage_notice = "1s"
outage_timeout = "2m"
"#,
        )
        .cluster;
        assert!(c.enabled);
        assert_eq!(c.nats.len(), 3);
        assert_eq!((c.room.as_str(), c.node.as_str(), c.replicas), ("lobby-2", "web_1", 5));
        assert_eq!(c.host_timeout, Duration::from_secs(20));
        assert_eq!(c.outage_notice, Duration::from_secs(1));
        assert_eq!(c.outage_timeout, Duration::from_secs(120));
        assert_eq!(parse("[cluster]\nnode = \"\"").cluster.node, host_node());
    }

    #[test]
    fn names_are_subject_tokens() {
        for bad in ["a.b", "a*", ">", "a b", "", "ü"] {
            let text = format!("[cluster]\nroom = \"{bad}\"");
            assert_error(&text, "2:8", &["cluster.room", "part of NATS subjects"]);
        }
        assert_error(
            "[cluster]\nnode = \"h.example\"",
            "2:8",
            &["cluster.node", "found \"h.example\""],
        );
        let long = "x".repeat(65);
        assert_error(&format!("[cluster]\nroom = \"{long}\""), "2:8", &["1 to 64"]);
    }

    #[test]
    fn nats_urls() {
        for bad in [
            "10.0.0.1:4222",
            "http://h:4222",
            "nats://",
            "nats://h:0",
            "nats://h:port",
            "nats://h:4222/path",
            "nats://::1:4222",
        ] {
            let text = format!("[cluster]\nnats = [\"{bad}\"]");
            assert_error(&text, "2:9", &["cluster.nats", "expected a NATS URL"]);
        }
        assert_error("[cluster]\nnats = []", "2:8", &["at least one server"]);
        assert_error("[cluster]\nnats = \"nats://h\"", "2:8", &["an array of NATS URLs"]);
        assert_error(
            "[cluster]\nnats = [\"nats://h\", \"nats://h\"]",
            "2:21",
            &["\"nats://h\" is listed twice"],
        );
    }

    #[test]
    fn numbers_and_durations() {
        assert_error("[cluster]\nreplicas = 0", "2:12", &["an integer from 1 to 5"]);
        assert_error("[cluster]\nreplicas = 6", "2:12", &["an integer from 1 to 5"]);
        assert_error("[cluster]\nhost_timeout = \"2s\"", "2:16", &["at least 3s"]);
        assert_error("[cluster]\nhost_timeout = 15", "2:16", &["\"15s\""]);
        assert_error("[cluster]\noutage_notice = \"0s\"", "2:17", &["longer than 0"]);
        assert_error(
            "[cluster]\noutage_notice = \"10s\"\noutage_timeout = \"10s\"",
            "3:18",
            &["cluster.outage_timeout", "not longer than cluster.outage_notice (10.0s)"],
        );
        assert_error(
            "[chat]\nmax_line_bytes = 524289\n[cluster]\nenabled = true\nnode = \"h\"",
            "4:11",
            &["cluster.enabled", "chat.max_line_bytes (524289) is more than 524288 bytes"],
        );
        let long = parse("[chat]\nmax_line_bytes = 524289\nmax_backlog_bytes = 1048576");
        assert_eq!(long.chat.max_line_bytes, 524_289, "alone it is fine");
        assert_error(
            "[cluster]\nenabled = true\nrooms = \"x\"",
            "3:1",
            &["unknown key 'rooms' in [cluster]"],
        );
    }
}
