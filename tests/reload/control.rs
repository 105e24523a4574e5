//! Driving a reload from the outside, as an operator does: `chatd status --json` parsed into a
//! [`Status`], `chatd reload` and its one-line answer, and [`wait_settled`] — the readiness
//! signal every reload test waits on (the new generation listed in status, the old one gone
//! from `/proc`).

use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::{CONTROL_TIMEOUT, SETTLE_TIMEOUT};

/// `chatd status --json`, parsed.
#[derive(Clone, Debug)]
pub struct Status {
    pub generation: u64,
    pub clients: u64,
    pub listen: Vec<String>,
    /// (slot, pid, generation, clients), sorted by slot then pid.
    pub workers: Vec<(u64, i32, u64, u64)>,
}

impl Status {
    pub fn pids(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.workers.iter().map(|w| w.1).collect();
        p.sort_unstable();
        p
    }

    fn slots(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.workers.iter().map(|w| w.0).collect();
        s.sort_unstable();
        s
    }
}

fn parse_status(text: &str) -> Status {
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {text:?}"));
    let u = |v: &Value, k: &str| -> u64 {
        v[k].as_u64().unwrap_or_else(|| panic!("status: {k:?} missing or not a number in {v}"))
    };
    let mut workers: Vec<(u64, i32, u64, u64)> = v["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("status: no workers array in {v}"))
        .iter()
        .map(|w| (u(w, "slot"), u(w, "pid") as i32, u(w, "generation"), u(w, "clients")))
        .collect();
    workers.sort_unstable();
    Status {
        generation: u(&v, "generation"),
        clients: u(&v, "clients"),
        listen: v["listen"]
            .as_array()
            .expect("status: listen")
            .iter()
            .map(|a| a.as_str().expect("listen entry").to_string())
            .collect(),
        workers,
    }
}

/// Runs `chatd status --json --control SOCKET`; must succeed.
pub fn status_at(control: &Path) -> Status {
    let out =
        run_chatd(&["status", "--json", "--control", control.to_str().unwrap()], CONTROL_TIMEOUT);
    assert!(out.status.success(), "chatd status failed: {}", output_text(&out));
    parse_status(&String::from_utf8_lossy(&out.stdout))
}

pub fn status(server: &Server) -> Status {
    status_at(&server.control_socket())
}

pub fn reload_at(control: &Path) -> Output {
    run_chatd(&["reload", "--control", control.to_str().unwrap()], CONTROL_TIMEOUT)
}

/// `chatd reload` must exit 0 printing exactly `reloaded: generation G, N workers`.
pub fn expect_reload_ok(out: &Output, generation: u64, workers: usize) {
    assert!(out.status.success(), "chatd reload failed: {}", output_text(out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!("reloaded: generation {generation}, {workers} workers"),
        "chatd reload output; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the server runs exactly `n` workers, all of `generation`, none of them in
/// `old`, with slots 0..n, and `/proc` shows exactly those pids as the supervisor's worker
/// children (the previous generation has exited). Returns that status.
pub fn wait_settled(
    control: &Path,
    supervisor: i32,
    n: usize,
    generation: u64,
    old: &[i32],
) -> Status {
    let mut last = None;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let st = status_at(control);
        let ok = st.generation == generation
            && st.workers.len() == n
            && st.workers.iter().all(|w| w.2 == generation && !old.contains(&w.1))
            && st.slots() == (0..n as u64).collect::<Vec<_>>()
            && worker_children(supervisor) == st.pids();
        if ok {
            return st;
        }
        if Instant::now() >= deadline {
            panic!(
                "after {SETTLE_TIMEOUT:?}: expected {n} workers of generation {generation} \
                 (none of {old:?}); status: {st:?}; /proc workers: {:?}; previous: {last:?}",
                worker_children(supervisor)
            );
        }
        last = Some(st);
        thread::sleep(Duration::from_millis(50));
    }
}

/// The `reload to generation G done in Xs` log line's X, in seconds.
pub fn reload_duration(server: &Server, generation: u64) -> f64 {
    let pat = format!("reload to generation {generation} done in ");
    let line = server.wait_for_log(&pat, LINE_TIMEOUT);
    let rest = &line[line.find(&pat).unwrap() + pat.len()..];
    rest.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("bad log line {line:?}"))
}
