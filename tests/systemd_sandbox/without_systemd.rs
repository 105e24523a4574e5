//! Checks of the packaged files that need no systemd: the packaged config is the repository's but
//! for the control socket, the unit carries the settings docs/operations.md relies on, and the
//! maintainer scripts are executable POSIX sh.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::MANIFEST_DIR;
use crate::common::*;
use crate::sandbox::run;

/// `packaging/chatd.toml` is `config/chatd.toml` but for the header comment, the listen
/// addresses (the packaged file listens on all interfaces, the development copy on the loopback),
/// the control socket (the packaged one is /run/chatd/control.sock, in systemd's
/// RuntimeDirectory) and the comments above those two keys. Every other key, default and key
/// comment must stay the same.
#[test]
fn packaged_config_matches_repo_config() {
    /// The body without the lines of the keys that differ and the comments above them; and
    /// those lines.
    fn normalise(text: &str) -> (Vec<String>, Vec<String>) {
        let mut lines: Vec<&str> = text.lines().collect();
        // The leading comment block (up to the first blank line).
        let body = lines.iter().position(|l| l.is_empty()).expect("a blank line after the header");
        lines.drain(..body);
        let mut values = Vec::new();
        for key in ["listen = ", "control_socket = "] {
            let at = lines
                .iter()
                .position(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("a {key:?} line"));
            values.push(lines[at].to_string());
            let mut start = at;
            while start > 0 && lines[start - 1].starts_with('#') {
                start -= 1;
            }
            lines.drain(start..=at);
        }
        (lines.into_iter().map(str::to_string).collect(), values)
    }
    let read = |p: &str| fs::read_to_string(Path::new(MANIFEST_DIR).join(p)).unwrap();
    let (repo, dev) = normalise(&read("config/chatd.toml"));
    let (packaged, values) = normalise(&read("packaging/chatd.toml"));
    assert_eq!(dev[0], "listen = [\"127.0.0.1:9999\"]");
    assert_eq!(values[0], "listen = [\"0.0.0.0:9999\"]");
    assert_eq!(values[1], "control_socket = \"/run/chatd/control.sock\"");
    for (i, (a, b)) in repo.iter().zip(&packaged).enumerate() {
        assert_eq!(
            a, b,
            "config/chatd.toml and packaging/chatd.toml differ (line {i} of the body)"
        );
    }
    assert_eq!(repo.len(), packaged.len(), "config/chatd.toml and packaging/chatd.toml differ");
    // And the packaged file is a valid config.
    let out = run_chatd(
        &["check-config", "--config", &format!("{MANIFEST_DIR}/packaging/chatd.toml")],
        LINE_TIMEOUT,
    );
    assert!(out.status.success(), "packaging/chatd.toml: {}", output_text(&out));
}

/// The unit has the settings docs/operations.md and docs/control.md rely on (checked again, as
/// systemd sees it, in the sandbox).
#[test]
fn unit_file_has_the_contract_settings() {
    let unit = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect()
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/bin/chatd serve --config /etc/chatd/chatd.toml"),
        ("ExecReload", "/usr/bin/chatd reload --config /etc/chatd/chatd.toml"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("FileDescriptorStoreMax", "1024"),
        ("WatchdogSec", "10s"),
        ("RuntimeDirectory", "chatd"),
        ("User", "chatd"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(get(key), vec![value], "{key}= in packaging/chatd.service");
    }
    assert_eq!(get("SystemCallFilter")[0], "@system-service");
    let nofile: u64 = get("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 100_000, "LimitNOFILE={nofile}: below the default max_clients");
    // heartbeat_timeout (default 5s) must stay below WatchdogSec, or a hung worker would get
    // the whole service killed before the supervisor replaces it.
    let config = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.toml")).unwrap();
    assert!(config.lines().any(|l| l == "heartbeat_timeout = \"5s\""));
}

#[test]
fn maintainer_scripts_are_executable_posix_sh() {
    for script in ["postinst", "prerm", "postrm"] {
        let path = Path::new(MANIFEST_DIR).join("packaging/debian").join(script);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable: {mode:o}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: not a /bin/sh script");
        assert!(text.contains("\nset -e\n"), "{script}: no set -e");
        let out = run(Command::new("sh").arg("-n").arg(&path), None, LINE_TIMEOUT);
        assert!(out.status.success(), "sh -n {script}: {}", output_text(&out));
    }
}
