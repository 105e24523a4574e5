//! A terminal for `chatd client` to run in: a tmux session on a socket of its own (so parallel
//! tests never share a tmux server), typed into with `send-keys` and read with `capture-pane`.
//! Every wait polls the pane until the expected text is there or a deadline passes. Dropping a
//! [`Tmux`] kills its tmux server and with it the client.
//!
//! tmux is required: without it these tests fail (CI installs it in `.ci/run`).

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::common::{CHATD, LINE_TIMEOUT, START_TIMEOUT, wait_until};

const SESSION: &str = "chat";
const COLUMNS: usize = 100;
const ROWS: usize = 30;
/// Poll interval while waiting for the pane to show something.
const POLL: Duration = Duration::from_millis(20);

/// The prompt of the client's input line.
pub const PROMPT: &str = "> ";

/// The pane runs the client under a shell that records how it ended (`exit N` or `signal N`),
/// written whole by a rename. tmux's own `pane_dead_status` is not used: tmux 3.3 sometimes
/// never reaps a pane's process, leaving the status unknown although the client has exited.
/// A second line says whether the client left the terminal's settings as it found them.
const WRAPPER: &str = r#"status=$1; shift; tty=$(stty -g); "$0" client "$@"; st=$?
if [ "$st" -gt 128 ]; then echo "signal $((st - 128))"; else echo "exit $st"; fi > "$status.new"
if [ "$(stty -g)" = "$tty" ]; then echo "terminal restored"; else echo "terminal changed"; fi >> "$status.new"
mv "$status.new" "$status""#;

/// One tmux server with one pane running `chatd client`.
pub struct Tmux {
    socket: PathBuf,
    /// Where the pane's shell writes how the client ended.
    status: PathBuf,
    _dir: TempDir,
}

impl Tmux {
    /// Runs `chatd client ADDRESS` in a new pane of `COLUMNS`×`ROWS` and waits for its prompt.
    pub fn client(address: &str) -> Tmux {
        Tmux::client_with(&[address])
    }

    /// Runs `chatd client ARGS…` (options, then the address) like [`Tmux::client`].
    pub fn client_with(args: &[&str]) -> Tmux {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("tmux.sock");
        let conf = dir.path().join("tmux.conf");
        // The pane stays after the client exits, so what it showed last can be read.
        let settings = "set -g remain-on-exit on\nset -g status off\nset -g history-limit 5000\n\
                        set -g default-terminal screen\n";
        fs::write(&conf, settings).expect("write tmux.conf");
        let status = dir.path().join("status");
        let tmux = Tmux { socket, status, _dir: dir };
        let (columns, rows) = (COLUMNS.to_string(), ROWS.to_string());
        let conf = conf.to_str().expect("utf-8 temp path");
        let status = tmux.status.to_str().expect("utf-8 temp path");
        let mut command = vec![
            "-f",
            conf,
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &columns,
            "-y",
            &rows,
            "sh",
            "-c",
            WRAPPER,
            CHATD,
            status,
        ];
        command.extend_from_slice(args);
        tmux.run(&command);
        tmux.wait_for_prompt();
        tmux
    }

    /// `tmux -S SOCKET ARGS…`, bounded in time; its stdout. Panics if tmux is missing or fails.
    fn run(&self, args: &[&str]) -> String {
        let mut child = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): the terminal client tests need it (apt-get install tmux)")
            });
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let status =
            wait_until(START_TIMEOUT, "tmux to answer", || child.try_wait().ok().flatten());
        let out = reader.join().expect("tmux output");
        if !status.success() {
            let mut err = String::new();
            let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
            panic!("tmux {args:?} failed with {status}: {err}");
        }
        out
    }

    /// Types `text` as it is (no key names).
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", SESSION, "-l", text]);
    }

    /// Presses keys by tmux's names: `Enter`, `Left`, `Up`, `C-a`, …
    pub fn press(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Types `line`, presses Enter and waits for the next empty prompt (the editor is reading
    /// again, so what is typed next is edited, not echoed by the terminal).
    pub fn enter(&self, line: &str) {
        let before = self.prompt_count();
        self.type_text(line);
        self.press(&["Enter"]);
        wait_until(LINE_TIMEOUT, &format!("a new prompt after {line:?}"), || {
            (self.prompt_count() > before && self.input_line() == PROMPT.trim_end()).then_some(())
        });
    }

    /// The whole pane, scrollback included, wrapped lines joined.
    pub fn text(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION])
    }

    /// The pane's lines (scrollback included, wrapped lines joined), without trailing blank ones.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.text().lines().map(|l| l.trim_end().to_owned()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// The visible screen's lines, without trailing blanks.
    pub fn screen(&self) -> Vec<String> {
        let screen = self.run(&["capture-pane", "-p", "-t", SESSION]);
        screen.lines().map(|l| l.trim_end().to_owned()).collect()
    }

    /// How many lines of the pane start with the prompt.
    fn prompt_count(&self) -> usize {
        self.lines().iter().filter(|l| l.starts_with(PROMPT.trim_end())).count()
    }

    /// (column, row) of the cursor on the visible screen.
    pub fn cursor(&self) -> (usize, usize) {
        let out = self.run(&["display-message", "-p", "-t", SESSION, "#{cursor_x} #{cursor_y}"]);
        let mut it = out.split_whitespace().map(|n| n.parse().expect("a cursor coordinate"));
        (it.next().expect("cursor_x"), it.next().expect("cursor_y"))
    }

    /// The screen row the cursor is on (the client's input line), without trailing blanks.
    pub fn input_line(&self) -> String {
        let (_, row) = self.cursor();
        self.screen().into_iter().nth(row).unwrap_or_default()
    }

    /// A `#{...}` format of the pane, e.g. `#{pane_title}`.
    pub fn format(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", SESSION, format]).trim_end().to_owned()
    }

    /// Polls the pane until `pred` holds for its lines; returns them. Panics after
    /// [`LINE_TIMEOUT`] with what the pane showed.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let lines = self.lines();
            if pred(&lines) {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!("the pane never showed {what} within {LINE_TIMEOUT:?}");
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until the input line reads `line` with the cursor in `column`.
    pub fn wait_for_input(&self, line: &str, column: usize) {
        wait_until(
            LINE_TIMEOUT,
            &format!("the input line {line:?}, cursor in column {column}"),
            || (self.input_line() == line && self.cursor().0 == column).then_some(()),
        );
    }

    /// Waits until a line of the pane contains `text`; returns that line.
    pub fn wait_for_text(&self, text: &str) -> String {
        let lines =
            self.wait_for(&format!("{text:?}"), |lines| lines.iter().any(|l| l.contains(text)));
        lines.into_iter().find(|l| l.contains(text)).expect("the line just seen")
    }

    fn wait_for_prompt(&self) {
        wait_until(START_TIMEOUT, "the client's prompt", || {
            (self.input_line() == PROMPT.trim_end()).then_some(())
        });
    }

    /// Waits for the client to exit; how it ended: `exit N` or `signal N`.
    pub fn wait_exit(&self) -> String {
        self.wait_exit_and_terminal().0
    }

    /// Waits for the client to exit; how it ended, and whether it left the terminal's settings
    /// as it found them.
    pub fn wait_exit_and_terminal(&self) -> (String, bool) {
        let status = wait_until(START_TIMEOUT, "the client to exit", || {
            fs::read_to_string(&self.status).ok()
        });
        let mut lines = status.lines();
        let ended = lines.next().unwrap_or_default().to_owned();
        (ended, lines.next() == Some("terminal restored"))
    }

    /// The pid of the `chatd client` process (the only child of the pane's shell).
    pub fn client_pid(&self) -> i32 {
        let shell = self.format("#{pane_pid}");
        let children = fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the pane's shell's children");
        children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("a client pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Ok(out) = Command::new("tmux")
                .arg("-S")
                .arg(&self.socket)
                .args(["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION])
                .output()
            {
                eprintln!(
                    "----- the client's terminal -----\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").status();
    }
}
