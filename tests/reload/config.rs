//! Reloads decided by the config file: a broken config fails with the error's position and
//! changes nothing (and `chatd status` says so), and `reload.handoff = false` drains the old workers instead of handing
//! their sessions over.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::control::*;
use crate::room::Room;
use crate::{CONTROL_TIMEOUT, room_server};

// ---------------------------------------------------------------------------------------------
// Broken config
// ---------------------------------------------------------------------------------------------

/// A reload with a broken config fails with the error's file:line:column and changes nothing:
/// same worker pids, same generation, the room goes on; a fixed config then reloads. A file that
/// is not TOML at all is named by `chatd reload --config` itself, which cannot find the control
/// socket in it; with `--control` the server reads it and reports the same position.
#[test]
fn broken_config_reload_changes_nothing() {
    let builder = room_server(4);
    let server = builder.clone().start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 6, "c");
    room.chat(0, "before");

    let path = server.config_path().display().to_string();
    let good = builder.render(&control);
    let by_control = ["reload", "--control", control.to_str().expect("utf-8 temp path")];
    let not_toml = format!("{good}\n[chat\n");
    // (config text, how reload is run, the offending line, its column if the contract pins it,
    // the message, whether the server read the file).
    let cases = [
        (
            builder.clone().server_key("bogus = 1").render(&control),
            &["reload"][..],
            "bogus = 1",
            Some(1),
            "unknown key 'bogus'",
            true,
        ),
        (
            builder.clone().workers(0).render(&control),
            &["reload"][..],
            "workers = 0",
            Some(11),
            "server.workers: expected an integer from 1 to 1024",
            true,
        ),
        (not_toml.clone(), &["reload"][..], "[chat", None, "invalid TOML", false),
        (not_toml, &by_control[..], "[chat", None, "invalid TOML", true),
    ];
    let mut failed_on_server = 0;
    for (n, (text, args, bad_line, column, message, on_server)) in cases.iter().enumerate() {
        let line = text.lines().position(|l| l == *bad_line).expect("bad line in config") + 1;
        fs::write(server.config_path(), text).expect("write config");
        let out = if args.len() == 1 {
            server.run(args, CONTROL_TIMEOUT)
        } else {
            run_chatd(args, CONTROL_TIMEOUT)
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "reload of a broken config succeeded: {}",
            output_text(&out)
        );
        assert!(out.stdout.is_empty(), "stdout of a failed reload: {}", output_text(&out));
        let prefix = format!("{path}:{line}:");
        let at = stderr
            .find(&prefix)
            .unwrap_or_else(|| panic!("case {n}: stderr does not name {prefix}COL: {stderr:?}"));
        let after = &stderr[at + prefix.len()..];
        let (col, rest) = after.split_once(": ").expect("file:line:col: message");
        let col: u32 = col.parse().unwrap_or_else(|_| panic!("case {n}: column in {stderr:?}"));
        assert!(col >= 1 && column.is_none_or(|c| c == col), "case {n}: column in {stderr:?}");
        assert!(rest.starts_with(message), "case {n}: message {rest:?}, expected {message:?}");
        if *on_server {
            failed_on_server += 1;
        } else {
            assert!(
                stderr.contains("--control PATH"),
                "case {n}: no hint at --control: {stderr:?}"
            );
        }
        let failure = "reload failed, keeping the running config";
        server.wait_for_log_count(failure, failed_on_server, LINE_TIMEOUT);
        let logged = server.log_lines().iter().filter(|l| l.contains(failure)).count();
        assert_eq!(logged, failed_on_server, "case {n}: the server read the file {logged} times");

        let now = status(&server);
        assert_eq!(now.generation, 1, "generation changed by a failed reload: {now:?}");
        assert_eq!(now.pids(), st.pids(), "workers changed by a failed reload");
        assert_eq!(worker_children(server.pid()), st.pids(), "/proc workers changed");
        assert_eq!(now.clients, room.clients.len() as u64);
        room.chat(n % room.clients.len(), &format!("still here {n}"));
    }
    // Someone new can still join, and the room still talks.
    room.join(&server, 1, "late");
    room.chat(6, "after the failed reloads");
    assert!(!server.log_contains("reload to generation"), "a failed reload rolled workers");

    // Fixed: the next reload works.
    fs::write(server.config_path(), good).expect("write config");
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    expect_reload_ok(&out, 2, 4);
    wait_settled(&control, server.pid(), 4, 2, &st.pids());
    room.chat(3, "after the good reload");
}

/// `chatd status` tells how the last reload went (docs/control.md, "Status"): `--json` has
/// `last_reload` (`null`, then `{"ok": false, "error", "duration_s"}`, then ok), the supervisor's
/// `pid` and `uptime_s`, each worker's `version`, and the placeholders of listeners and cluster
/// this release has none of; the table shows the same, the failure's reason included.
#[test]
fn status_reports_the_last_reload() {
    let builder = room_server(2);
    let server = builder.clone().start();
    let control = server.control_socket();
    wait_settled(&control, server.pid(), 2, 1, &[]);
    let json = || -> serde_json::Value {
        let out = server.run(&["status", "--json"], CONTROL_TIMEOUT);
        assert!(out.status.success(), "chatd status --json: {}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    };
    let v = json();
    assert!(v["last_reload"].is_null(), "{v}");
    assert_eq!(v["pid"], server.pid(), "{v}");
    assert!(v["uptime_s"].is_u64(), "{v}");
    assert_eq!(v["tls_listen"], serde_json::json!([]), "{v}");
    assert_eq!(v["web_listen"], serde_json::json!([]), "{v}");
    assert!(v["cluster"].is_null() && v.get("cluster").is_some(), "{v}");
    let workers = v["workers"].as_array().expect("workers");
    assert!(workers.iter().all(|w| w["version"] == env!("CARGO_PKG_VERSION")), "{v}");

    fs::write(server.config_path(), builder.clone().server_key("bogus = 1").render(&control))
        .expect("write config");
    assert!(!server.run(&["reload"], CONTROL_TIMEOUT).status.success());
    let v = json();
    let last = &v["last_reload"];
    assert_eq!(last["ok"], false, "{v}");
    let error = last["error"].as_str().expect("the reason");
    assert!(error.contains("unknown key 'bogus'"), "{v}");
    assert!(last["duration_s"].is_f64(), "{v}");
    let out = server.run(&["status"], CONTROL_TIMEOUT);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chatd status: {}", output_text(&out));
    assert!(table.contains(&format!("last reload: FAILED: {error}")), "{table}");
    assert!(table.contains(&format!("pid {}", server.pid())), "{table}");

    fs::write(server.config_path(), builder.render(&control)).expect("write config");
    expect_reload_ok(&server.run(&["reload"], CONTROL_TIMEOUT), 2, 2);
    let v = json();
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
    assert!(v["last_reload"]["error"].is_null(), "{v}");
}

/// A reload whose config path has become a FIFO or a device is refused at once by the server,
/// which keeps serving: reading the path must neither wait for a writer nor read without end.
#[test]
fn reload_refuses_a_config_that_is_no_regular_file() {
    let server = room_server(2).start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 2, 1, &[]);
    let path = server.config_path();
    let (mut a, nick_a, _) = server.join("a");
    let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let cases: [(&dyn Fn(), &str); 2] = [
        (&|| nix::unistd::mkfifo(path, fifo).expect("mkfifo"), "is a FIFO, not a regular file"),
        (
            &|| std::os::unix::fs::symlink("/dev/zero", path).expect("symlink"),
            "is a character device, not a regular file",
        ),
    ];
    for (n, (make, problem)) in cases.iter().enumerate() {
        fs::remove_file(path).expect("remove config");
        make();
        let started = Instant::now();
        let out = reload_at(&control);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(!out.status.success(), "case {n}: {}", output_text(&out));
        let expected = format!("{}: cannot read: the path {problem}", path.display());
        assert!(output_text(&out).contains(&expected), "case {n}: {}", output_text(&out));
        assert_eq!(status(&server).pids(), st.pids(), "case {n}: workers changed");
        a.send_line(&format!("still here {n}"));
        a.expect_chat(&nick_a, &format!("still here {n}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Drain when hand-off is off
// ---------------------------------------------------------------------------------------------

/// With `reload.handoff = false` the old workers drain: `chatd reload` returns once the new
/// generation serves; the old clients keep chatting with everyone (a newcomer on a new worker
/// included) until `drain_timeout`, then read `* server restarting, please reconnect` and EOF,
/// and the room sees them leave `(server restarting)`.
#[test]
fn handoff_off_drains() {
    // Long enough that the chat below surely happens before it ends, even on a busy machine.
    const DRAIN: Duration = Duration::from_secs(3);
    let server = room_server(4).raw("[reload]\nhandoff = false\ndrain_timeout = \"3s\"").start();
    let control = server.control_socket();
    let st = wait_settled(&control, server.pid(), 4, 1, &[]);
    let mut room = Room::default();
    room.join(&server, 3, "old");
    let old_owners = room.owners(server.port(), &st.pids());

    let t0 = Instant::now();
    let out = server.run(&["reload"], CONTROL_TIMEOUT);
    let returned = t0.elapsed();
    expect_reload_ok(&out, 2, 4);
    assert!(returned < DRAIN, "`chatd reload` waited for the drain ({returned:?})");
    let now = status(&server);
    assert_eq!(now.generation, 2);
    let new_pids: Vec<i32> =
        now.workers.iter().filter(|w| w.2 == 2).map(|w| w.1).collect::<Vec<_>>();
    assert_eq!(new_pids.len(), 4, "new generation in status: {now:?}");
    assert!(new_pids.iter().all(|p| !st.pids().contains(p)), "{now:?}");

    // A newcomer lands on a new worker; the old clients are still on their old ones.
    let c = room.join_at(server.addr(), "new");
    let owner = room.owners(server.port(), &[st.pids(), new_pids.clone()].concat());
    assert!(new_pids.contains(&owner[c]), "newcomer served by {} not a new worker", owner[c]);
    assert_eq!(&owner[..3], &old_owners[..], "old clients moved although hand-off is off");
    room.chat(0, "old client speaking while draining");
    room.chat(c, "newcomer speaking");
    let drained_by = t0.elapsed();
    assert!(drained_by < DRAIN, "too slow to chat within the drain window ({drained_by:?})");

    let nicks = room.nicks.clone();
    let left: Vec<String> =
        (0..3).map(|i| format!("* {} left (server restarting)", nicks[i])).collect();
    for i in 0..3 {
        // Old workers drain one after the other: a client may first see other old clients
        // leave (never itself), then its own notice, then EOF.
        let notice = "* server restarting, please reconnect";
        let others: Vec<&String> =
            left.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| l).collect();
        let client = &mut room.clients[i];
        match client.read_until(LINE_TIMEOUT, |l| !others.iter().any(|o| *o == l)) {
            Ok(l) if l == notice => {}
            other => panic!(
                "old client {i}: expected {notice:?} (after others' leaves), got {other:?}; \
                 transcript {:?}",
                client.transcript()
            ),
        }
        let at = t0.elapsed();
        assert!(
            at >= DRAIN - Duration::from_millis(50),
            "old client {i} told to reconnect {at:?} after the reload began (drain {DRAIN:?})"
        );
        client.expect_eof();
    }
    let newcomer = &mut room.clients[c];
    let mut got: Vec<String> = (0..3).map(|_| newcomer.next_line()).collect();
    got.sort();
    let mut left = left;
    left.sort();
    assert_eq!(got, left, "what the newcomer saw of the drain");
    // The old workers are gone; the new ones keep serving.
    wait_settled(&control, server.pid(), 4, 2, &st.pids());
    newcomer.send_line("alone now");
    newcomer.expect_chat(&nicks[c], "alone now");
    assert_eq!(status(&server).clients, 1);
}
