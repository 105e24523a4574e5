//! Config paths and files that are not what they should be (docs/configuration.md, "What is
//! checked"; docs/operations.md, "Status"): a FIFO, a device, a directory or an oversized file as
//! config get a clear error at once from every command that reads a config; a `control_socket`
//! naming a file that is not a socket is a config error and the file is left alone; and
//! `reload|status|stop` name a config that is not TOML instead of trying the default socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;

/// "At once": well under the harness deadline, so a hang or an endless read fails the test.
const AT_ONCE: Duration = Duration::from_secs(5);

/// Runs `chatd ARGS` and checks it fails at once; returns its stderr.
#[track_caller]
fn fails_at_once(args: &[&str]) -> String {
    let started = Instant::now();
    let out = run_chatd(args, LINE_TIMEOUT);
    let took = started.elapsed();
    assert!(took < AT_ONCE, "`chatd {}` took {took:?}", args.join(" "));
    assert_eq!(out.status.code(), Some(1), "`chatd {}`: {}", args.join(" "), output_text(&out));
    assert!(out.stdout.is_empty(), "`chatd {}`: {}", args.join(" "), output_text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// What the config path names, and the words the error must use for it.
fn unusable_paths(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let fifo = dir.join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let big = dir.join("big.toml");
    // A valid config padded with a comment to 2 MiB.
    let padding = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
    fs::write(&big, format!("[server]\nworkers = 1\n{padding}")).expect("write big config");
    vec![
        (fifo, "is a FIFO, not a regular file"),
        (PathBuf::from("/dev/zero"), "is a character device, not a regular file"),
        (dir.to_path_buf(), "is a directory, not a regular file"),
        (big, "is larger than 1024 KiB"),
    ]
}

#[test]
fn a_config_path_that_is_no_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, problem) in unusable_paths(dir.path()) {
        let config = path_str(&path);
        let expected = format!("{config}: cannot read: the path {problem}");
        for command in ["check-config", "serve", "status", "reload", "stop"] {
            let stderr = fails_at_once(&[command, "--config", config]);
            assert!(stderr.contains(&expected), "chatd {command} --config {config}: {stderr:?}");
        }
    }
}

#[test]
fn a_control_socket_that_is_no_socket_is_a_config_error_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "precious").expect("write notes");
    let config = dir.path().join("chatd.toml");
    let text = ServerBuilder::new().workers(1).render(&notes);
    fs::write(&config, &text).expect("write config");
    let line = text.lines().position(|l| l.starts_with("control_socket")).expect("key") + 1;
    let config = path_str(&config);
    for command in ["check-config", "serve"] {
        let stderr = fails_at_once(&[command, "--config", config]);
        let expected = format!("{config}:{line}:18: server.control_socket: ");
        assert!(stderr.contains(&expected), "chatd {command}: {stderr:?} lacks {expected:?}");
        assert!(stderr.contains("exists and is a regular file, not a socket"), "{stderr:?}");
        assert_eq!(fs::read_to_string(&notes).expect("notes"), "precious", "after {command}");
    }
}

/// Runs `chatd COMMAND --config PATH` for each control command.
fn control_commands(config: &Path) -> Vec<(&'static str, Output)> {
    ["status", "reload", "stop"]
        .into_iter()
        .map(|command| (command, run_chatd(&[command, "--config", path_str(config)], LINE_TIMEOUT)))
        .collect()
}

#[test]
fn control_commands_name_a_config_that_is_not_toml() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("chatd.toml");
    fs::write(&config, "[server]\nworkers = = 2\n").expect("write config");
    for (command, out) in control_commands(&config) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "chatd {command}: {}", output_text(&out));
        let expected = format!("chatd {command}: {}:2:11: invalid TOML: ", config.display());
        assert!(stderr.starts_with(&expected), "chatd {command}: {stderr:?}");
        assert!(stderr.contains("--control PATH"), "no hint at --control: {stderr:?}");
        assert!(!stderr.contains("cannot reach"), "chatd {command}: {stderr:?}");
    }

    // A config named on the command line that does not exist is an error too.
    for (command, out) in control_commands(&dir.path().join("missing.toml")) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "chatd {command}: {}", output_text(&out));
        assert!(stderr.contains("missing.toml: cannot read: "), "chatd {command}: {stderr:?}");
    }
}

#[test]
fn control_commands_take_the_socket_from_an_invalid_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("chatd.toml");
    let socket = dir.path().join("elsewhere.sock");
    let text = format!("[server]\nworkers = 0\nbogus = 1\ncontrol_socket = {socket:?}\n");
    fs::write(&config, text).expect("write config");
    for (command, out) in control_commands(&config) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "chatd {command}: {}", output_text(&out));
        let expected = format!("cannot reach chatd at {}: ", socket.display());
        assert!(stderr.contains(&expected), "chatd {command}: {stderr:?}");
    }
}
