//! The sandbox harness itself: whatever a test does, its sandbox goes away with it, so that
//! test runs leave no processes, cgroups, mounts or directories behind on the host.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use crate::sandbox::sandbox_or_skip;

/// The host's cgroup2 mount point (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

/// Whether `pid` still runs (a zombie waiting for the host's init to reap it does not).
fn running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X'))
}

/// A test that panics with a sandbox up (and a service running in it) leaves none of it behind.
#[test]
fn sandbox_is_torn_down_when_a_test_panics() {
    let Some(sb) = sandbox_or_skip("sandbox_is_torn_down_when_a_test_panics") else { return };
    sb.ok(&["systemd-run", "--unit=sleeper", "sleep", "600"]);
    let dir = sb.dir().to_path_buf();
    let pid = sb.host_pid();
    // The sandbox's cgroup, as the host sees it: "0::/chatd-sandbox-…/init.scope".
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the sandbox's cgroup");
    let path = own.lines().find_map(|l| l.strip_prefix("0::/")).expect("a cgroup2 line");
    let cgroup = cgroup2_mount().join(path.split('/').next().unwrap_or_default());
    let sleeper = cgroup.join("system.slice/sleeper.service/cgroup.procs");
    let sleeper: Vec<u32> = fs::read_to_string(&sleeper)
        .unwrap_or_else(|e| panic!("{}: {e}", sleeper.display()))
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(sleeper.len(), 1, "the service's processes: {sleeper:?}");

    let failed = catch_unwind(AssertUnwindSafe(move || {
        let _sandbox = sb;
        panic!("a failing test");
    }));
    assert!(failed.is_err());

    for p in [pid, sleeper[0]] {
        assert!(!running(p), "pid {p} of the sandbox still runs");
    }
    assert!(!cgroup.exists(), "{} is left behind", cgroup.display());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    let dir = dir.to_string_lossy();
    assert!(!mounts.contains(dir.as_ref()), "a mount under {dir} is left on the host");
}
