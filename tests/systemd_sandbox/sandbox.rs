//! Commands with deadlines ([`run`]) and the throw-away systemd: [`Sandbox`] boots one with
//! `tests/tools/systemd-sandbox`, runs commands inside it, reads unit properties, and tears it
//! down on drop (printing chatd's journal when a test panics). [`sandbox_or_skip`] decides
//! whether a test can run here at all.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::{CMD_TIMEOUT, MANIFEST_DIR};

/// Runs `cmd` to completion with a deadline (killed, then a panic, after `timeout`).
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A message that `cargo test` shows even for a passing test (not captured).
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "systemd_sandbox: {msg}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `$CHATD_SYSTEMD_SANDBOX`, else the repository's `tests/tools/systemd-sandbox`.
fn sandbox_tool() -> PathBuf {
    std::env::var_os("CHATD_SYSTEMD_SANDBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(MANIFEST_DIR).join("tests/tools/systemd-sandbox"))
}

/// Boots a sandbox. Only a non-root run skips (returns `None` after printing why), and not
/// even that with `CHATD_REQUIRE_SANDBOX=1`; as root, a sandbox that cannot boot fails the
/// test.
pub fn sandbox_or_skip(test: &str) -> Option<Sandbox> {
    if !is_root() {
        let why = "needs root to boot a systemd sandbox";
        if std::env::var("CHATD_REQUIRE_SANDBOX").is_ok_and(|v| v == "1") {
            panic!("{test}: {why} (and CHATD_REQUIRE_SANDBOX=1)");
        }
        note(&format!("SKIPPED {test}: {why}"));
        return None;
    }
    match Sandbox::up(&sandbox_tool()) {
        Ok(s) => Some(s),
        Err(e) => panic!("{test}: `systemd-sandbox up` failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------

/// A running sandbox; `down` on drop (after printing chatd's journal on a panic), so that
/// neither a passing nor a failing test leaves processes, mounts or cgroups behind.
pub struct Sandbox {
    tool: PathBuf,
    dir: PathBuf,
}

impl Sandbox {
    fn up(tool: &Path) -> Result<Sandbox, String> {
        if !tool.is_file() {
            return Err(format!("no sandbox tool at {}", tool.display()));
        }
        // The tool owns DIR (and removes it on `down`); no ',', ':' or blanks in it.
        let dir = tempfile::Builder::new()
            .prefix("chatd-test-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let out = run(Command::new(tool).arg("up").arg(&dir), None, CMD_TIMEOUT);
        let sandbox = Sandbox { tool: tool.to_path_buf(), dir };
        if !out.status.success() {
            return Err(output_text(&out));
        }
        Ok(sandbox)
    }

    /// The state directory (removed by `down`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host pid of the sandbox's systemd.
    pub fn host_pid(&self) -> u32 {
        let pid = fs::read_to_string(self.dir.join("pid")).expect("the sandbox's pid file");
        pid.trim().parse().unwrap_or_else(|e| panic!("pid file {pid:?}: {e}"))
    }

    /// Runs `args` inside the sandbox.
    pub fn exec_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run(Command::new(&self.tool).arg("exec").arg(&self.dir).args(args), stdin, CMD_TIMEOUT)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_in(args, None)
    }

    /// Runs `args` inside; must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "`{}` failed: {}", args.join(" "), output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `data` to `path` inside (mode `mode`).
    pub fn write(&self, path: &str, data: &[u8], mode: &str) {
        let script = "mkdir -p \"$(dirname \"$1\")\" && cat >\"$1.tmp\" && chmod \"$2\" \"$1.tmp\" \
                      && mv -f \"$1.tmp\" \"$1\"";
        let out = self.exec_in(&["sh", "-c", script, "sh", path, mode], Some(data));
        assert!(out.status.success(), "writing {path}: {}", output_text(&out));
    }

    pub fn read(&self, path: &str) -> String {
        self.ok(&["cat", path])
    }

    /// Copies the host file `src` to `dst` inside, with the same mode.
    pub fn cp(&self, src: &Path, dst: &str) {
        let data = fs::read(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        let mode = fs::metadata(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        self.write(dst, &data, &format!("{:o}", mode.permissions().mode() & 0o7777));
    }

    /// `systemctl show -P PROP chatd`.
    pub fn prop(&self, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-P", prop, "chatd.service"]).trim_end().to_string()
    }

    pub fn wait_prop(&self, prop: &str, expected: &str) {
        let mut last = String::new();
        let deadline = Instant::now() + LINE_TIMEOUT;
        while Instant::now() < deadline {
            last = self.prop(prop);
            if last == expected {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("{prop} of chatd.service is {last:?}, expected {expected:?}");
    }

    /// `chatd status --json` inside (as root, through the control socket).
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ok(&["chatd", "status", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("chatd status --json: {e}: {out}"))
    }

    /// (slot, pid, generation) of every worker, sorted by slot (pids of the sandbox's pid
    /// namespace).
    pub fn workers(&self) -> Vec<(u64, u64, u64)> {
        let status = self.status_json();
        let mut w: Vec<(u64, u64, u64)> = status["workers"]
            .as_array()
            .unwrap_or_else(|| panic!("no workers in {status}"))
            .iter()
            .map(|w| {
                let n = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
                (n("slot"), n("pid"), n("generation"))
            })
            .collect();
        w.sort();
        w
    }

    /// Where the journal ends now, for [`Sandbox::warnings_since`].
    pub fn journal_cursor(&self) -> String {
        let out = self.ok(&["journalctl", "--no-pager", "-n", "1", "-o", "json"]);
        let entry: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("journalctl -n 1 -o json: {e}: {out}"));
        entry["__CURSOR"].as_str().unwrap_or_else(|| panic!("no cursor in {entry}")).to_string()
    }

    /// The warnings (and worse) logged after `cursor` by systemd itself or by chatd.service,
    /// as `IDENTIFIER[PID]: MESSAGE`. systemd's own messages often name no unit (`journalctl -u
    /// chatd` misses them), hence PID 1.
    pub fn warnings_since(&self, cursor: &str) -> Vec<String> {
        // Whatever was logged before this call is in the journal once it returns.
        self.ok(&["journalctl", "--sync"]);
        let after = format!("--after-cursor={cursor}");
        let out = self.ok(&["journalctl", "--no-pager", "-o", "json", "-p", "warning", &after]);
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("journalctl -o json: {e}: {l}"))
            })
            .filter(|e| {
                e["_PID"] == "1"
                    || e["_SYSTEMD_UNIT"] == "chatd.service"
                    || e["UNIT"] == "chatd.service"
            })
            .map(|e| {
                let field =
                    |k: &str| e[k].as_str().map_or_else(|| e[k].to_string(), str::to_string);
                format!("{}[{}]: {}", field("SYSLOG_IDENTIFIER"), field("_PID"), field("MESSAGE"))
            })
            .collect()
    }

    /// The `Key:` lines of `/proc/PID/status` of a process in the sandbox.
    pub fn proc_status(&self, pid: u64) -> Vec<(String, String)> {
        self.ok(&["cat", &format!("/proc/{pid}/status")])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            let out =
                self.exec(&["journalctl", "-u", "chatd", "--no-pager", "-o", "short-precise"]);
            eprintln!("----- journalctl -u chatd -----\n{}", output_text(&out));
        }
        let out = run(Command::new(&self.tool).arg("down").arg(&self.dir), None, CMD_TIMEOUT);
        if !out.status.success() {
            eprintln!("systemd-sandbox down {}: {}", self.dir.display(), output_text(&out));
        }
    }
}
