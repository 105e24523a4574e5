//! Unit tests of the checks that keep a config from hurting clients or operators: control
//! characters in the formats, values echoed back in messages, durations written as numbers, a
//! `control_socket` that names something other than a socket.

use super::tests::{assert_error, error, parse};

#[test]
fn formats_refuse_control_characters() {
    for (key, column) in [("message_format", 18), ("time_format", 15)] {
        for c in ['\u{1b}', '\n', '\r', '\u{0}', '\u{7f}', '\u{85}', '\u{9b}'] {
            let escaped = format!("\\u{:04X}", u32::from(c));
            let text = format!("[chat]\n{key} = \"{{text}} %H {escaped}[31m\"\n");
            assert_error(
                &text,
                &format!("2:{column}"),
                &[&format!(
                    "chat.{key}: must not contain control characters (found U+{:04X})",
                    u32::from(c)
                )],
            );
        }
    }
    assert_error(
        "[chat]\ntime_format = \"%H%n%M\"\n",
        "2:15",
        &["chat.time_format: must not contain \"%n\""],
    );
    // A tab is not a control character that harms a terminal.
    let c = parse("[chat]\nmessage_format = \"{time}\\t{text}\"\ntime_format = \"%H%t%M\\t\"\n");
    assert_eq!(c.chat.time_format, "%H%t%M\t");
}

#[test]
fn huge_values_are_not_echoed_whole() {
    let huge = "x".repeat(100_000);
    let cases = [
        format!("[chat]\nidle_timeout = \"{huge}\"\n"),
        format!("[chat]\ntime_format = \"%Q{huge}\"\n"),
        format!("[chat]\nmessage_format = \"{{{huge}}}\"\n"),
        format!("[server]\nlisten = [\"{huge}\"]\n"),
        format!("[server]\ncontrol_socket = \"{huge}\"\n"),
        format!("[server]\nworkers = \"{huge}\"\n"),
        format!("[server]\n{huge} = 1\n"),
        format!("[socket]\nnodelay = \"{huge}\"\n"),
        format!("[chat]\nhistory = {}\n", "9".repeat(100_000)),
        format!("[reload]\ndrain_timeout = \"{huge}"),
    ];
    for text in &cases {
        let message = error(text);
        assert!(message.starts_with("t.toml:2:"), "{}", &message[..200.min(message.len())]);
        assert!(message.chars().count() < 500, "{} chars: {}…", message.len(), &message[..200]);
    }
    // The part shown ends in an ellipsis.
    assert!(error(&cases[0]).contains(&format!("found \"{}…\"", "x".repeat(60))));
    // A value is shown with its control characters escaped.
    assert_error("[server]\nworkers = \"a\\u001b[2Jb\"\n", "2:11", &["found \"a\\u{1b}[2Jb\""]);
}

#[test]
fn a_number_for_a_duration_suggests_one_with_a_unit() {
    let keys = [
        ("server", "heartbeat_timeout"),
        ("socket", "keepalive"),
        ("chat", "idle_timeout"),
        ("chat.rate_limit", "per"),
        ("reload", "drain_timeout"),
    ];
    for (table, key) in keys {
        let column = key.len() + 4;
        assert_error(
            &format!("[{table}]\n{key} = 300\n"),
            &format!("2:{column}"),
            &[&format!(r#"{table}.{key}: expected a duration in quotes with a unit like "300s""#)],
        );
        assert_error(
            &format!("[{table}]\n{key} = 1.5\n"),
            &format!("2:{column}"),
            &[&format!(r#"{table}.{key}: expected a duration like "500ms""#), "found 1.5"],
        );
    }
}

#[test]
fn control_socket_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for (path, kind) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let text = format!("[server]\ncontrol_socket = \"{}\"\n", path.display());
        assert_error(
            &text,
            "2:18",
            &["server.control_socket: ", &format!("exists and is {kind}, not a socket")],
        );
    }
    assert_error(
        &format!("[server]\ncontrol_socket = \"{}\"\n", dir.path().display()),
        "2:18",
        &["is a directory, not a socket"],
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // A socket (left by a server) and a path that does not exist yet are fine.
    let socket = dir.path().join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for path in [socket, dir.path().join("new.sock")] {
        let text = format!("[server]\ncontrol_socket = \"{}\"\n", path.display());
        assert_eq!(parse(&text).server.control_socket, path);
    }
}

#[test]
fn metrics_listen() {
    assert_eq!(parse("").metrics.listen, None);
    assert_eq!(parse("[metrics]\nlisten = \"\"\n").metrics.listen, None);
    let c = parse("[metrics]\nlisten = \"127.0.0.1:9101\"\n");
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9101".parse().unwrap()));
    let expected = r#"metrics.listen: expected IP:PORT like "127.0.0.1:9101", or "" for none"#;
    for bad in ["localhost:9101", "127.0.0.1", ":9101", "9101"] {
        let text = format!("[metrics]\nlisten = \"{bad}\"\n");
        assert_error(&text, "2:10", &[expected, &format!("found \"{bad}\"")]);
    }
    assert_error("[metrics]\nlisten = 9101\n", "2:10", &["metrics.listen: expected a string"]);
    assert_error(
        "[metrics]\nlisten = [\"127.0.0.1:9101\"]\n",
        "2:10",
        &["metrics.listen: expected a string"],
    );
    assert_error(
        "[server]\nlisten = [\"127.0.0.1:9999\"]\n[metrics]\nlisten = \"127.0.0.1:9999\"\n",
        "4:10",
        &["metrics.listen: 127.0.0.1:9999 is also in server.listen"],
    );
    // Port 0 is a port of its own each time.
    let c = parse("[server]\nlisten = [\"127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(c.metrics.listen, Some("127.0.0.1:0".parse().unwrap()));
    assert_error("[metrics]\nport = 1\n", "2:1", &["unknown key 'port' in [metrics]"]);
}
