//! In-place upgrade: the supervisor re-executes itself when its binary changed on disk.
//!
//! A reload finds the file the supervisor was started from replaced (a package upgrade writes
//! a new file and renames it over the old one: another inode than the one running). Then,
//! before any worker is touched:
//!
//! 1. **Probe.** The new binary runs as a child, `chatd serve --config PATH --check-state`, and
//!    reads the supervisor's state (`state`) from its stdin, a memory file, together with the
//!    config it would run with. It answers one line, `ok …`, once it could read both. A binary
//!    that exits otherwise, answers anything else or nothing within [`PROBE_TIMEOUT`] is not
//!    used: the reload fails with its answer (`chatd reload`, the log, `last_reload`), and this
//!    supervisor goes on as before.
//! 2. **Exec.** The supervisor finishes what cannot cross an exec (control requests are
//!    answered, `chatd who` rounds with what came in), reads what the workers sent, writes its
//!    state afresh into a memory file, keeps open exactly the descriptors the state names
//!    (listeners, buses, the control socket and the waiting `chatd reload` connection, the
//!    metrics listener, the state itself), blocks its signals so that none is lost or fatal in
//!    between, and `execve`s the new binary with `serve --config PATH --resume-fd N`: same PID,
//!    same environment (systemd's `NOTIFY_SOCKET`, `WATCHDOG_USEC`), same children.
//! 3. **Resume** (`resume`). The new image adopts everything the state names and carries on
//!    with the reload that asked for the upgrade: the workers roll onto the new binary as in
//!    any reload, and the answer goes to the waiting `chatd reload`.
//!
//! Should `execve` itself fail, nothing was given up: the descriptors are closed-on-exec again
//! and the reload fails. Once the new image runs there is no way back; the probe is what makes
//! that step safe.

mod probe;
mod resume;
pub mod state;

pub use probe::check_state;
pub use resume::resume;

use super::{CAUGHT, RunState, Supervisor};
use crate::cloexec;
use crate::control::Reply;
use crate::signals;
use crossbeam_channel::{Receiver, Sender};
use log::{error, info};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use state::{SavedBus, SavedReload, SavedSlot, SavedWorker, SupervisorState, age_ms, left_ms};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the new binary has to read the state and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old image waits for the answers to control requests to be written, and for
/// descriptors queued on the buses to be sent, before it execs.
const SETTLE: Duration = Duration::from_secs(1);

/// An upgrade waiting for the new binary's answer to the probe.
pub(super) struct Pending {
    reply: Option<Sender<Reply>>,
    /// The `chatd reload` connection, answered by the new image.
    client: Option<OwnedFd>,
    config_text: String,
    started: Instant,
    deadline: Instant,
    probe_pid: u32,
    answer: Receiver<Result<String, String>>,
}

impl Pending {
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The upgrade cannot go on (the server is stopping).
    pub(super) fn abandon(self, why: &str) {
        let _ = kill(Pid::from_raw(self.probe_pid as i32), Signal::SIGKILL);
        if let Some(tx) = self.reply {
            let _ = tx.send(Reply::failed(why));
        }
    }
}

/// Whether `exe` names another file than the one this process runs: a new inode (or device)
/// at the path it was started from. A package manager never rewrites a running binary in place
/// (that fails with `ETXTBSY`); it writes a new file and renames it over the old one.
pub(super) fn binary_changed(exe: &Path) -> bool {
    match (std::fs::metadata("/proc/self/exe"), std::fs::metadata(exe)) {
        (Ok(running), Ok(on_disk)) => {
            (running.dev(), running.ino()) != (on_disk.dev(), on_disk.ino())
        }
        _ => false,
    }
}

/// A memory file holding `bytes`, read from its start.
fn memory_file(bytes: &[u8]) -> std::io::Result<File> {
    let mut file = File::from(memfd_create(c"chatd-state", MFdFlags::MFD_CLOEXEC)?);
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

impl Supervisor {
    /// A reload found a new binary: ask it whether it can take over (the probe).
    pub(super) fn start_upgrade(
        &mut self,
        reply: Option<Sender<Reply>>,
        client: Option<OwnedFd>,
        config_text: String,
        started: Instant,
    ) {
        info!(
            "{} changed on disk; checking the new binary before re-executing",
            self.exe.display()
        );
        let reload = SavedReload {
            client_fd: None,
            config_text: config_text.clone(),
            started_ms: age_ms(started),
            from_release: crate::version::VERSION.into(),
        };
        let probe = self
            .save_state(Some(reload))
            .map(|(state, _)| state.encode())
            .and_then(|bytes| self.spawn_probe(&bytes).map_err(|e| e.to_string()));
        match probe {
            Ok((probe_pid, answer)) => {
                self.upgrade = Some(Pending {
                    reply,
                    client,
                    config_text,
                    started,
                    deadline: Instant::now() + PROBE_TIMEOUT,
                    probe_pid,
                    answer,
                });
            }
            Err(e) => {
                let e = format!("cannot check the new binary {}: {e}", self.exe.display());
                self.fail_upgrade(reply, started, e);
            }
        }
    }

    /// Starts `chatd serve --check-state` from the new file with the state on its stdin; its
    /// answer comes on the returned channel (and wakes the event loop).
    fn spawn_probe(
        &self,
        state: &[u8],
    ) -> std::io::Result<(u32, Receiver<Result<String, String>>)> {
        let stdin = memory_file(state)?;
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--check-state")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::from(OwnedFd::from(stdin)))
            .stdout(Stdio::piped());
        let child = command.spawn()?;
        let pid = child.id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waker = self.waker.clone();
        let exe = self.exe.display().to_string();
        signals::in_threads_blocked(&CAUGHT, || {
            std::thread::Builder::new().name("upgrade-probe".into()).spawn(move || {
                let answer = match child.wait_with_output() {
                    Ok(out) => {
                        let text = String::from_utf8_lossy(&out.stdout);
                        let line = text.lines().next().unwrap_or("").trim().to_string();
                        if out.status.success() && line.starts_with("ok") {
                            Ok(line)
                        } else if line.is_empty() {
                            Err(format!("{exe} exited ({}) without answering", out.status))
                        } else {
                            Err(format!("{exe}: {line}"))
                        }
                    }
                    Err(e) => Err(format!("{exe}: {e}")),
                };
                let _ = tx.send(answer);
                let _ = waker.wake();
            })
        })?;
        Ok((pid, rx))
    }

    /// Called every turn of the event loop while the probe runs.
    pub(super) fn advance_upgrade(&mut self) {
        let Some(pending) = &self.upgrade else { return };
        let answer = match pending.answer.try_recv() {
            Ok(answer) => answer,
            Err(_) if Instant::now() < pending.deadline => return,
            Err(_) => {
                let _ = kill(Pid::from_raw(pending.probe_pid as i32), Signal::SIGKILL);
                Err(format!(
                    "{} did not answer within {}s",
                    self.exe.display(),
                    PROBE_TIMEOUT.as_secs()
                ))
            }
        };
        match answer {
            Ok(line) => {
                info!("the new binary says: {line}; re-executing");
                let e = self.reexec();
                // Only back here when the exec did not happen.
                if let Some(pending) = self.upgrade.take() {
                    self.fail_upgrade(pending.reply, pending.started, e);
                }
            }
            Err(e) => {
                if let Some(pending) = self.upgrade.take() {
                    self.fail_upgrade(pending.reply, pending.started, e);
                }
            }
        }
    }

    fn fail_upgrade(&mut self, reply: Option<Sender<Reply>>, started: Instant, why: String) {
        let e = format!("upgrade failed, still running chatd {}: {why}", crate::version::VERSION);
        error!("reload failed: {e}");
        self.reload_failed(started, e.clone());
        if let Some(tx) = reply {
            let _ = tx.send(Reply::failed(e));
        }
    }

    /// Hands everything to the new binary; returns only if that could not happen, saying why.
    fn reexec(&mut self) -> String {
        if let Err(e) = self.settle_before_exec() {
            return e;
        }
        // A `chatd stop` answered while settling ends the upgrade.
        let Some(pending) = &self.upgrade else { return "the server is stopping".into() };
        if self.run_state != RunState::Running {
            return "the server is stopping".into();
        }
        let reload = SavedReload {
            client_fd: pending.client.as_ref().map(|fd| fd.as_raw_fd()),
            config_text: pending.config_text.clone(),
            started_ms: age_ms(pending.started),
            from_release: crate::version::VERSION.into(),
        };
        let (state, mut keep) = match self.save_state(Some(reload)) {
            Ok(saved) => saved,
            Err(e) => return e,
        };
        let file = match memory_file(&state.encode()) {
            Ok(file) => file,
            Err(e) => return format!("cannot write the state: {e}"),
        };
        keep.push(file.as_raw_fd());
        let argv = match exec_args(&self.config_path, file.as_raw_fd()) {
            Ok(argv) => argv,
            Err(e) => return e,
        };
        let Ok(path) = CString::new(self.exe.as_os_str().as_bytes()) else {
            return format!("{}: not a path exec takes", self.exe.display());
        };
        let kept = keep_open(&keep, true);
        let _ = signals::block(&CAUGHT, true);
        log::logger().flush();
        let error = match kept.and_then(|()| nix::unistd::execv(&path, &argv).map(|_| ())) {
            Ok(()) => String::from("exec returned"),
            Err(e) => format!("cannot execute {}: {e}", self.exe.display()),
        };
        let _ = keep_open(&keep, false);
        let _ = signals::block(&CAUGHT, false);
        error
    }

    /// Finishes what cannot cross the exec: queued control requests are answered (and the
    /// answers written), `chatd who` rounds answered with what came in, the workers' frames
    /// read, and descriptors queued on the buses sent.
    fn settle_before_exec(&mut self) -> Result<(), String> {
        let mut written = Vec::new();
        while let Ok(request) = self.control.try_recv() {
            written.push(request.written.clone());
            self.on_control(request);
        }
        self.answer_operators_now();
        let ids: Vec<_> = self.workers.keys().copied().collect();
        for id in ids {
            self.read_bus(id);
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            self.flush_buses();
            let parked =
                self.workers.values().filter(|w| w.bus_open()).all(|w| w.conn.park().is_ok());
            if parked {
                break;
            }
            if Instant::now() >= deadline {
                return Err("descriptors on their way to a worker could not be sent".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let deadline = Instant::now() + SETTLE;
        for w in written {
            let _ = w.recv_deadline(deadline);
        }
        self.settle_cluster()
    }

    /// The state as it is now, and the descriptors it names.
    fn save_state(
        &self,
        reload: Option<SavedReload>,
    ) -> Result<(SupervisorState, Vec<RawFd>), String> {
        let mut keep = Vec::new();
        let slots = self
            .slots
            .iter()
            .map(|s| {
                let listeners: Vec<RawFd> = s.listeners.iter().map(|l| l.as_raw_fd()).collect();
                keep.extend(&listeners);
                SavedSlot {
                    listeners,
                    worker: s.worker.map(|w| w.0),
                    backoff_ms: s.backoff.as_millis() as u64,
                    restart_in_ms: s.restart_at.map(left_ms),
                }
            })
            .collect();
        let mut workers = Vec::new();
        for (id, w) in &self.workers {
            let bus = if w.bus_open() {
                let parked = w.conn.park().map_err(|_| {
                    format!("slot {}: descriptors are on their way to pid {}", w.slot, w.pid)
                })?;
                let fd = w.conn.raw_fd();
                keep.push(fd);
                Some(SavedBus { fd, unread: parked.unread, unsent: parked.unsent })
            } else {
                None
            };
            workers.push(SavedWorker {
                id: id.0,
                slot: w.slot,
                generation: w.generation,
                pid: w.pid,
                bus,
                age_ms: age_ms(w.started),
                state: w.state,
                version: w.version.clone(),
                handoff_version: w.handoff_version,
                heartbeat_age_ms: age_ms(w.last_heartbeat),
                took_over: w.took_over,
                counters: w.counters,
            });
        }
        let control_fd = self.control_socket.listener().as_raw_fd();
        keep.push(control_fd);
        let metrics = self.stats.save();
        keep.extend(metrics.fd);
        if let Some(fd) = reload.as_ref().and_then(|r| r.client_fd) {
            keep.push(fd);
        }
        let state = SupervisorState {
            header: SupervisorState::header(),
            exe: self.exe.clone(),
            config_path: self.config_path.clone(),
            config_text: self.config_text.clone(),
            listen_config: self.listen_config.clone(),
            listen: self.listen.clone(),
            bus_frame_version: crate::bus::frame::VERSION,
            slots,
            workers,
            next_worker: self.next_worker.0,
            generation: self.generation,
            hub: self.hub.save(),
            control_fd,
            metrics,
            uptime_ms: age_ms(self.started),
            last_watchdog_ms: age_ms(self.last_watchdog),
            last_reload: self.last_reload.clone(),
            status_text: self.notifier.last_status().to_string(),
            next_inspect: self.operators.next_id(),
            reload,
            cluster: self.hub.save_cluster(),
        };
        Ok((state, keep))
    }
}

/// `ARGV0 serve --config PATH --resume-fd N`: what the new image is started with.
fn exec_args(config_path: &Path, state_fd: RawFd) -> Result<Vec<CString>, String> {
    let argv0 = std::env::args_os().next().unwrap_or_else(|| OsString::from("chatd"));
    let args = [
        argv0,
        "serve".into(),
        "--config".into(),
        config_path.as_os_str().to_owned(),
        "--resume-fd".into(),
        state_fd.to_string().into(),
    ];
    args.iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("{a:?}: not an exec argument")))
        .collect()
}

/// Keeps `fds` open across exec (`keep`), or closes them on exec again.
fn keep_open(fds: &[RawFd], keep: bool) -> nix::Result<()> {
    for &fd in fds {
        // SAFETY: every descriptor here belongs to an object the supervisor holds (a listener,
        // a bus, the control socket, the state file) and stays open for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if keep { cloexec::clear(fd)? } else { cloexec::set(fd)? }
    }
    Ok(())
}

/// Reads the whole of `file` (a memory file, or the probe's stdin).
fn read_all(mut file: impl Read) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| format!("cannot read the state: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_renamed_over_the_running_one_is_a_change() {
        let running = std::env::current_exe().expect("own binary");
        assert!(!binary_changed(&running), "the running file itself is no change");
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("chatd");
        std::fs::copy(&running, &copy).expect("copy");
        assert!(binary_changed(&copy), "the same bytes in another file are a new binary");
        assert!(!binary_changed(&dir.path().join("missing")), "nothing to run is no upgrade");
    }
}
