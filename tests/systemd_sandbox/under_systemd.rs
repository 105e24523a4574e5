//! The package under a real systemd: `systemd-analyze verify` of the unit, and the service end
//! to end as an operator drives it (install, start, chat, hardening, reloads, upgrade, a hung
//! worker, a killed supervisor, stop, purge).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::MANIFEST_DIR;
use crate::common::*;
use crate::package::{Package, install, obtain_package, uninstall};
use crate::sandbox::{note, sandbox_or_skip};

/// The worker count and heartbeat timeout the test writes into the installed config.
const WORKERS: usize = 2;

// ---------------------------------------------------------------------------------------------
// Clients of the installed service
// ---------------------------------------------------------------------------------------------

/// The packaged config with `line` (which must be there exactly once) replaced.
pub(crate) fn replace_line(text: &str, line: &str, with: &str) -> String {
    let n = text.lines().filter(|l| *l == line).count();
    assert_eq!(n, 1, "packaging/chatd.toml must contain the line {line:?} once");
    text.lines().map(|l| if l == line { with } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

/// Connects and reads the welcome and the history that follows (packaged config: up to 10
/// room lines), so the next line read is live: a private message to ourselves marks the end.
pub(crate) fn join(addr: SocketAddr, label: &str) -> (Client, String) {
    let mut c = Client::connect(addr, label);
    let (nick, _) = c.expect_welcome();
    c.send_line(&format!("/msg {nick} sync-{label}"));
    let mark = format!("[pm to {nick}] sync-{label}");
    c.read_until(LINE_TIMEOUT, |l| l.ends_with(&mark))
        .unwrap_or_else(|e| panic!("{label}: no pm to self: {e}; read {:?}", c.transcript()));
    (c, nick)
}

/// `from` says `text`; every client in `all` (sender included, echo is on) reads it next.
fn chat(clients: &mut [&mut Client], from: usize, nick: &str, text: &str) {
    clients[from].send_line(text);
    for c in clients.iter_mut() {
        let line = c
            .read_until(LINE_TIMEOUT, |l| parse_chat(l).is_some())
            .unwrap_or_else(|e| panic!("{}: no chat line: {e}", c.label()));
        let parsed = parse_chat(&line).unwrap();
        assert_eq!(
            (parsed.nick.as_str(), parsed.text.as_str()),
            (nick, text),
            "{}: {line:?}, lines read so far: {:#?}",
            c.label(),
            c.transcript()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests under systemd
// ---------------------------------------------------------------------------------------------

/// `systemd-analyze verify` of the installed unit prints nothing (any output is a warning:
/// unknown key, bad value, missing binary, ...; it exits 0 on most of them). Run inside a
/// sandbox, where /usr/bin/chatd exists and /run is a throw-away tmpfs (verify writes there).
#[test]
fn unit_verifies_clean() {
    let Some(sb) = sandbox_or_skip("unit_verifies_clean") else { return };
    sb.cp(Path::new(CHATD), "/usr/bin/chatd");
    sb.cp(
        &Path::new(MANIFEST_DIR).join("packaging/chatd.service"),
        "/lib/systemd/system/chatd.service",
    );
    let out = sb.exec(&["systemd-analyze", "verify", "/lib/systemd/system/chatd.service"]);
    assert!(out.status.success(), "systemd-analyze verify: {}", output_text(&out));
    assert_eq!(output_text(&out), "", "systemd-analyze verify printed warnings");
    // A deliberately broken copy must fail, or this test could not fail.
    let unit = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.service")).unwrap();
    sb.write(
        "/tmp/broken.service",
        unit.replace("KillMode=mixed", "KillMode=mixd").as_bytes(),
        "644",
    );
    let out = sb.exec(&["systemd-analyze", "verify", "/tmp/broken.service"]);
    assert!(output_text(&out).contains("mixd"), "verify accepted KillMode=mixd");
}

/// The package under systemd, as an operator uses it.
#[test]
fn packaged_service_end_to_end() {
    let Some(sb) = sandbox_or_skip("packaged_service_end_to_end") else { return };
    let test_start = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let package = obtain_package(scratch.path());

    // --- install: user created, service neither enabled nor started, config as shipped.
    let install_out = install(&sb, &package);
    assert!(
        install_out.contains("systemctl enable --now chatd"),
        "postinst should tell how to start: {install_out}"
    );
    let passwd = sb.ok(&["getent", "passwd", "chatd"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let uid: u64 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "chatd must be a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert_eq!(sb.prop("LoadState"), "loaded");
    assert_eq!(sb.prop("ActiveState"), "inactive", "the package must not start chatd");
    assert_eq!(sb.prop("UnitFileState"), "disabled", "the package must not enable chatd");
    let shipped = fs::read_to_string(Path::new(MANIFEST_DIR).join("packaging/chatd.toml")).unwrap();
    assert_eq!(sb.read("/etc/chatd/chatd.toml"), shipped);
    assert!(
        sb.read("/usr/lib/sysctl.d/60-chatd.conf").contains("\nnet.ipv4.tcp_migrate_req = 1\n")
    );

    // --- configure: a free port on loopback, 2 workers, a short heartbeat timeout.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config =
        replace_line(&shipped, "listen = [\"0.0.0.0:9999\"]", &format!("listen = [\"{addr}\"]"));
    let config = replace_line(&config, "workers = \"auto\"", &format!("workers = {WORKERS}"));
    let config = replace_line(&config, "heartbeat_timeout = \"5s\"", "heartbeat_timeout = \"2s\"");
    sb.write("/etc/chatd/chatd.toml", config.as_bytes(), "644");

    // --- start: returns after READY=1, so the port accepts right away.
    sb.ok(&["systemctl", "start", "chatd"]);
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.prop("SubState"), "running");
    let mut alice = Client::connect(addr, "alice");
    match alice.read_line(Duration::from_secs(5)) {
        Ok(l) if parse_welcome(&l).is_some() => {}
        other => panic!("first client after `systemctl start`: {other:?}"),
    }
    drop(alice);
    let (mut alice, alice_nick) = join(addr, "alice");
    let (mut bob, bob_nick) = join(addr, "bob");
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "hello from bob");
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "hi bob");
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 1"));
    let main_pid: u64 = sb.prop("MainPID").parse().unwrap();

    // --- the sysctl: where systemd-sysctl could not set it (a container), chatd says so.
    let migrate_req = sb.read("/proc/sys/net/ipv4/tcp_migrate_req");
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    let warned = journal.lines().any(|l| l.contains("net.ipv4.tcp_migrate_req is 0"));
    assert_eq!(
        warned,
        migrate_req.trim() == "0",
        "tcp_migrate_req reads {migrate_req:?} in the sandbox; journal:\n{journal}"
    );

    // --- hardening, as systemd applied it.
    for (prop, expected) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillMode", "mixed"),
        ("Restart", "on-failure"),
        ("WatchdogUSec", "10s"),
        ("User", "chatd"),
        ("RuntimeDirectory", "chatd"),
        ("RuntimeDirectoryMode", "0750"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("LimitNOFILE", "524288"),
    ] {
        assert_eq!(sb.prop(prop), expected, "systemctl show -P {prop} chatd");
    }
    let filter = sb.prop("SystemCallFilter");
    let allowed: Vec<&str> = filter.split_whitespace().collect();
    for syscall in ["epoll_wait", "accept4", "sendmsg", "execve", "clone"] {
        assert!(allowed.contains(&syscall), "SystemCallFilter lacks {syscall}");
    }
    for syscall in ["mount", "setuid", "ptrace", "reboot", "setrlimit"] {
        assert!(!allowed.contains(&syscall), "SystemCallFilter allows {syscall}");
    }
    // The fd limit as applied: 524288, or the host's hard limit where that is lower (this VM
    // clamps to 20000).
    let mut host = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut host) }, 0);
    let nofile = 524_288u64.min(host.rlim_max);
    let workers = sb.workers();
    assert_eq!(workers.len(), WORKERS, "{workers:?}");
    for pid in std::iter::once(main_pid).chain(workers.iter().map(|w| w.1)) {
        let status = sb.proc_status(pid);
        let get = |k: &str| {
            status.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let ids = format!("{uid} {uid} {uid} {uid}");
        assert_eq!(get("Uid"), ids, "pid {pid}: Uid");
        assert_eq!(get("Gid"), ids, "pid {pid}: Gid (group chatd has the user's id)");
        assert_eq!(get("NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(get("Seccomp"), "2", "pid {pid}: seccomp filter mode");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(get(cap), "0000000000000000", "pid {pid}: {cap}");
        }
        let limits = sb.read(&format!("/proc/{pid}/limits"));
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
        assert_eq!(nums, vec![nofile.to_string(); 2], "pid {pid}: {line}");
    }
    let run_dir = sb.ok(&["stat", "-c", "%a %U %G", "/run/chatd", "/run/chatd/control.sock"]);
    assert_eq!(run_dir, "750 chatd chatd\n600 chatd chatd\n");
    let security = sb.ok(&["systemd-analyze", "security", "--no-pager", "chatd.service"]);
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for chatd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {security}"));
    assert!(exposure <= 2.0, "systemd-analyze security: exposure {exposure} (was 1.2)");
    note(&format!("systemd-analyze security chatd: exposure {exposure}"));

    // --- reload: generation 2, new workers, clients keep chatting, no warning logged.
    let cursor = sb.journal_cursor();
    sb.ok(&["systemctl", "reload", "chatd"]);
    let reloaded = sb.workers();
    assert_eq!(reloaded.len(), WORKERS, "{reloaded:?}");
    for w in &reloaded {
        assert_eq!(w.2, 2, "`systemctl reload` returned before the reload was done: {reloaded:?}");
        assert!(!workers.iter().any(|o| o.1 == w.1), "worker {} survived: {workers:?}", w.1);
    }
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 2"));
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.prop("MainPID"), main_pid.to_string());
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "after the reload");
    assert_eq!(sb.warnings_since(&cursor), Vec::<String>::new(), "warnings logged by the reload");

    // --- a broken config: reload fails, nothing changes, the failure shows in StatusText.
    let broken = replace_line(&config, "[server]", "[server]\nno_such_key = 1");
    sb.write("/etc/chatd/chatd.toml", broken.as_bytes(), "644");
    let out = sb.exec(&["systemctl", "reload", "chatd"]);
    assert!(!out.status.success(), "reload of a broken config succeeded: {}", output_text(&out));
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_eq!(sb.workers(), reloaded, "a failed reload changed the workers");
    let status = sb.prop("StatusText");
    assert!(
        status.starts_with(&format!(
            "{WORKERS} workers, 2 clients, generation 2; last reload failed: "
        )),
        "StatusText after a failed reload: {status:?}"
    );
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    assert!(
        journal.lines().any(|l| l.contains("/etc/chatd/chatd.toml:") && l.contains("no_such_key")),
        "the reload error (file:line:col) is not in the journal"
    );
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "still here");
    sb.write("/etc/chatd/chatd.toml", config.as_bytes(), "644");
    sb.ok(&["systemctl", "reload", "chatd"]);
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 3"));
    chat(&mut [&mut alice, &mut bob], 1, &bob_nick, "after the repair");

    // --- upgrade: installing the package again reloads the running service onto the new
    // binary (postinst: daemon-reload, then try-reload-or-restart), keeping the clients and the
    // edited conffile, and logging no warning.
    let cursor = sb.journal_cursor();
    let upgrade_out = match &package {
        Package::Deb(_) => sb.ok(&["dpkg", "-i", "/tmp/chatd.deb"]),
        Package::Files => {
            // As dpkg unpacks it: a new file renamed over the old one.
            sb.cp(Path::new(CHATD), "/usr/bin/chatd");
            sb.ok(&["/tmp/postinst", "configure", "0.1.0-1"])
        }
    };
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 2 clients, generation 4"));
    assert_eq!(
        sb.prop("MainPID"),
        main_pid.to_string(),
        "the upgrade restarted chatd: {upgrade_out}"
    );
    assert_eq!(sb.read("/etc/chatd/chatd.toml"), config, "the upgrade replaced the edited config");
    // The new file replaced the old one: the supervisor re-executed itself from it (same pid,
    // under the unit's sandbox and system-call filter), rather than going on from the deleted file.
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    assert!(
        journal.lines().any(|l| l.contains("re-executed: chatd ")),
        "the supervisor did not re-execute itself on the upgrade: {upgrade_out}"
    );
    let exe = sb.ok(&["readlink", &format!("/proc/{main_pid}/exe")]);
    assert_eq!(exe.trim(), "/usr/bin/chatd", "the supervisor's binary after the upgrade");
    chat(&mut [&mut alice, &mut bob], 0, &alice_nick, "after the upgrade");
    assert_eq!(sb.warnings_since(&cursor), Vec::<String>::new(), "warnings logged by the upgrade");
    drop((alice, bob));
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 0 clients, generation 4"));

    // --- a hung worker (SIGSTOP) is killed and replaced by the supervisor, not by systemd.
    let before = sb.workers();
    let (slot, hung, _) = before[0];
    sb.ok(&["kill", "-STOP", &hung.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let w = sb.workers();
        if w.len() == WORKERS && w.iter().any(|&(s, p, _)| s == slot && p != hung) {
            break w;
        }
        assert!(Instant::now() < deadline, "worker {hung} was not replaced: {w:?}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(after.iter().find(|w| w.0 == slot).unwrap().2, 4, "{after:?}");
    assert_eq!(sb.prop("MainPID"), main_pid.to_string(), "systemd restarted the service");
    assert_eq!(sb.prop("NRestarts"), "0");
    assert_eq!(sb.prop("ActiveState"), "active");
    let (mut carol, carol_nick) = join(addr, "carol");
    chat(&mut [&mut carol], 0, &carol_nick, "after the hang");

    // --- the supervisor crashes: systemd restarts the service; its clients stay connected
    // (tests/systemd_sandbox/crash.rs has the crowd version).
    sb.ok(&["kill", "-KILL", &main_pid.to_string()]);
    let notice =
        "* the server restarted; lines sent in the last moment may not have reached the room";
    carol.read_until(LINE_TIMEOUT, |l| l == notice).unwrap_or_else(|e| {
        panic!("carol: no notice after the crash: {e}: {:?}", carol.transcript())
    });
    // The listeners stay open in systemd's descriptor store (RestartSec=1s): a connection made
    // before the restart waits in the queue and is served by the restarted supervisor.
    let mut early = Client::try_connect(addr, "early")
        .unwrap_or_else(|e| panic!("connecting while the supervisor is down: {e}"));
    match early.read_line(Duration::from_secs(20)) {
        Ok(l) if parse_welcome(&l).is_some() => {}
        other => panic!("a connection queued during the restart: {other:?}"),
    }
    drop(early);
    sb.wait_prop("NRestarts", "1");
    sb.wait_prop("ActiveState", "active");
    let new_main: u64 = sb.prop("MainPID").parse().unwrap();
    assert_ne!(new_main, main_pid);
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 1 clients, generation 1"));
    // The room survived in systemd's descriptor store: its history goes on.
    let (mut erin, erin_nick) = join(addr, "erin");
    assert!(
        erin.transcript().iter().any(|l| l.ends_with("after the hang")),
        "the history did not survive the crash: {:?}",
        erin.transcript()
    );
    chat(&mut [&mut erin, &mut carol], 0, &erin_nick, "after the crash");
    chat(&mut [&mut erin, &mut carol], 1, &carol_nick, "still here after the crash");
    drop((erin, carol));

    // --- stop: every client is told, then EOF; a clean exit.
    let mut clients: Vec<Client> = (0..3).map(|i| join(addr, &format!("stop{i}")).0).collect();
    sb.wait_prop("StatusText", &format!("{WORKERS} workers, 3 clients, generation 1"));
    sb.ok(&["systemctl", "stop", "chatd"]);
    for c in &mut clients {
        c.read_until(LINE_TIMEOUT, |l| l == "* server shutting down")
            .unwrap_or_else(|e| panic!("{}: no shutdown notice: {e}", c.label()));
        c.expect_eof();
    }
    assert_eq!(sb.prop("ActiveState"), "inactive");
    assert_eq!(sb.prop("Result"), "success");
    assert_eq!(sb.prop("ExecMainStatus"), "0");
    assert!(Client::try_connect(addr, "after stop").is_err(), "port {port} still accepts");

    // --- enable, then remove the package: it stops the service (clients told) and cleans up.
    sb.ok(&["systemctl", "enable", "--now", "chatd"]);
    assert_eq!(sb.prop("UnitFileState"), "enabled");
    let (mut dave, _) = join(addr, "dave");
    // A stop empties the descriptor store: the new start has no history.
    assert!(
        !dave.transcript().iter().any(|l| l.contains("after the crash")),
        "history came back after a stop: {:?}",
        dave.transcript()
    );
    uninstall(&sb, &package);
    dave.read_until(LINE_TIMEOUT, |l| l == "* server shutting down")
        .unwrap_or_else(|e| panic!("dave: no shutdown notice on package removal: {e}"));
    dave.expect_eof();
    assert_eq!(sb.prop("LoadState"), "not-found");
    let left = sb.exec(&[
        "ls",
        "-d",
        "/usr/bin/chatd",
        "/etc/chatd",
        "/lib/systemd/system/chatd.service",
        "/etc/systemd/system/multi-user.target.wants/chatd.service",
        "/usr/lib/sysctl.d/60-chatd.conf",
    ]);
    assert_eq!(String::from_utf8_lossy(&left.stdout), "", "left behind after purge");
    note(&format!("end to end: {:?}", test_start.elapsed()));
}
