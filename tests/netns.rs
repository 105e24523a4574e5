//! What depends on the host's network setup: the start-up warning about
//! `net.ipv4.tcp_migrate_req` (docs/operations.md, "The sysctl") and `chatd client`'s default
//! port 9999. Both settings are per network namespace, so where the tests run as root they get
//! a fresh namespace (loopback only) of their own: there the sysctl can be set either way, and
//! port 9999 is free, without touching the host. Elsewhere those parts are skipped, saying so.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
/// The start of the warning line.
const WARNING: &str = "net.ipv4.tcp_migrate_req is 0: ";

/// Runs `f` on a thread of its own in a new network namespace with loopback up, or returns
/// `None` after saying why that is not possible here.
fn in_own_netns<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {what}: needs root for a network namespace of its own");
        return None;
    }
    let what = what.to_string();
    let run = thread::spawn(move || {
        // SAFETY: unshare(2) takes no pointers. CLONE_NEWNET moves only this thread (and what it
        // spawns) into the new namespace; the rest of the test process stays where it was.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("skipped {what}: cannot create a network namespace: {e}");
            return None;
        }
        match Command::new("ip").args(["link", "set", "lo", "up"]).status() {
            Ok(status) if status.success() => Some(f()),
            other => {
                eprintln!("skipped {what}: cannot bring loopback up: {other:?}");
                None
            }
        }
    });
    run.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts a server and says whether it logged the warning (before it listened, so by now).
fn warns() -> bool {
    let server = ServerBuilder::new().workers(1).start();
    server.log_contains(WARNING)
}

#[test]
fn migrate_req_warning_iff_it_is_0_here() {
    match fs::read_to_string(MIGRATE_REQ) {
        Ok(value) if value.trim() == "0" => assert!(warns(), "no warning with {MIGRATE_REQ} = 0"),
        Ok(value) => assert!(!warns(), "a warning with {MIGRATE_REQ} = {}", value.trim()),
        Err(e) => {
            eprintln!("{MIGRATE_REQ}: {e} (a kernel before 5.14): no warning expected");
            assert!(!warns(), "a warning without {MIGRATE_REQ}");
        }
    }
}

#[test]
fn migrate_req_warning_both_ways() {
    let results = in_own_netns("setting tcp_migrate_req both ways", || {
        [("0", true), ("1", false)].map(|(value, expected)| {
            fs::write(MIGRATE_REQ, value).expect("set tcp_migrate_req in the namespace");
            let read = Command::new("cat").arg(MIGRATE_REQ).output().expect("cat");
            assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), value, "not set in the netns");
            (value, warns(), expected)
        })
    });
    for (value, warned, expected) in results.into_iter().flatten() {
        assert_eq!(warned, expected, "warning with tcp_migrate_req = {value}");
    }
}

#[test]
fn client_without_a_port_uses_9999() {
    let printed = in_own_netns("the client's default port", || {
        let _server = ServerBuilder::new().listen(&["127.0.0.1:9999"]).workers(1).start();
        let mut child = Command::new(CHATD)
            .args(["client", "127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chatd client");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"/who\n").expect("write to the client");
        drop(stdin);
        let status =
            wait_until(START_TIMEOUT, "the client to exit", || child.try_wait().ok().flatten());
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read its output");
        (status, out)
    });
    if let Some((status, out)) = printed {
        assert!(status.success(), "client exited with {status}: {out}");
        assert!(out.contains("\n* 1 online: guest-1\n"), "no /who answer in {out:?}");
    }
}
