//! `chatd client`, the terminal client, driven like a person would: lines typed on its stdin,
//! the room read from its stdout, Ctrl-D as a closed stdin.

mod common;

use common::{CHATD, LINE_TIMEOUT, START_TIMEOUT, Server, ServerBuilder, parse_chat, wait_until};
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;

/// A running `chatd client` with its stdout read line by line in the background.
struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Terminal {
    fn start(server: &Server) -> Terminal {
        let mut child = Command::new(CHATD)
            .args(["client", &server.addr().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chatd client");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Terminal { child, stdin, lines, seen: Vec::new() }
    }

    fn type_line(&mut self, line: &str) {
        self.type_raw(format!("{line}\n").as_bytes());
    }

    /// Bytes into the client's stdin, as a pipe would carry them.
    fn type_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("type into the client");
    }

    /// Ctrl-D.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line the client printed that satisfies `pred`.
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("client never printed {what}; it printed {:?}", self.seen),
            }
        }
    }

    /// Everything the client printed after the welcome line, once its stdout has closed.
    fn rest(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(LINE_TIMEOUT) {
            self.seen.push(line);
        }
        self.seen.iter().skip(1).cloned().collect()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_until(START_TIMEOUT, "the client to exit", || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server() -> Server {
    ServerBuilder::new().workers(2).chat_key("history_on_join = 0").start()
}

#[test]
fn client_shows_the_room_while_you_type_and_quits() {
    let server = server();
    let (mut observer, observer_nick, _) = server.join("observer");
    let mut term = Terminal::start(&server);
    let welcome = term.expect("the welcome line", |l| l.starts_with("* Welcome to chatd."));
    let nick =
        welcome.split("You are ").nth(1).and_then(|r| r.split('.').next()).unwrap().to_string();
    observer.expect_line(&format!("* {nick} joined (2 online)"));

    term.type_line("hello from a terminal");
    let line = observer.read_line(LINE_TIMEOUT).expect("chat line");
    let chat = parse_chat(&line).expect("a chat line");
    assert_eq!((chat.nick.as_str(), chat.text.as_str()), (nick.as_str(), "hello from a terminal"));
    term.expect("its own echo", |l| l.ends_with(&format!("<{nick}> hello from a terminal")));

    // Lines from the room appear while the user is (not) typing.
    observer.send_line("hi there");
    let from_observer = format!("<{observer_nick}> hi there");
    term.expect("the observer's line", |l| l.ends_with(&from_observer));
    observer.read_until(LINE_TIMEOUT, |l| l.ends_with(&from_observer)).expect("own echo");

    term.type_line("/quit see you");
    observer.expect_line(&format!("* {nick} left (quit: see you)"));
    assert!(term.wait_exit().success());
}

#[test]
fn ctrl_d_leaves_the_room() {
    let server = server();
    let (mut observer, _, _) = server.join("observer");
    let mut term = Terminal::start(&server);
    let welcome = term.expect("the welcome line", |l| l.starts_with("* Welcome to chatd."));
    let nick =
        welcome.split("You are ").nth(1).and_then(|r| r.split('.').next()).unwrap().to_string();
    observer.expect_line(&format!("* {nick} joined (2 online)"));
    term.close_stdin();
    observer.expect_line(&format!("* {nick} left (quit)"));
    assert!(term.wait_exit().success());
}

#[test]
fn client_exits_cleanly_when_the_server_goes() {
    let mut server = server();
    let mut term = Terminal::start(&server);
    term.expect("the welcome line", |l| l.starts_with("* Welcome to chatd."));
    server.signal(Signal::SIGTERM);
    term.expect("the shutdown notice", |l| l == "* server shutting down");
    assert!(term.wait_exit().success());
    assert!(server.wait_exit(START_TIMEOUT).success());
}

/// The nick from the client's welcome line.
fn welcome_nick(term: &mut Terminal) -> String {
    let welcome = term.expect("the welcome line", |l| l.starts_with("* Welcome to chatd."));
    welcome.split("You are ").nth(1).and_then(|r| r.split('.').next()).unwrap().to_string()
}

#[test]
fn piped_invalid_utf8_is_sent_replaced_and_never_quits() {
    let server = server();
    let (mut observer, observer_nick, _) = server.join("observer");
    let mut term = Terminal::start(&server);
    let nick = welcome_nick(&mut term);
    observer.expect_line(&format!("* {nick} joined (2 online)"));

    term.type_raw(b"caf\xe9 au lait\n\xff\xfe\r\nstill here\n");
    observer.expect_chat(&nick, "caf\u{FFFD} au lait");
    observer.expect_chat(&nick, "\u{FFFD}\u{FFFD}");
    observer.expect_chat(&nick, "still here");
    term.expect("its own echo", |l| l.ends_with(&format!("<{nick}> still here")));
    // Still in the room: the observer's /who counts it.
    observer.send_line("/who");
    observer.expect_line(&format!("* 2 online: {}", sorted_nicks(&[&observer_nick, &nick])));
}

#[test]
fn piped_input_ends_after_the_servers_answers() {
    let server = server();
    let (mut observer, observer_nick, _) = server.join("observer");
    let mut term = Terminal::start(&server);
    let nick = welcome_nick(&mut term);
    observer.expect_line(&format!("* {nick} joined (2 online)"));
    // Everything at once, then end of input: the answers still come before the client exits.
    term.type_raw(b"/who\n/nick bad\xe9\nlast words\n");
    term.close_stdin();
    observer.expect_chat(&nick, "last words");
    observer.expect_line(&format!("* {nick} left (quit)"));
    assert!(term.wait_exit().success());
    // Usage errors are answered at once, so they may come before the /who answer.
    let printed = term.rest();
    let who = format!("* 2 online: {}", sorted_nicks(&[&observer_nick, &nick]));
    assert!(printed.contains(&who), "no /who answer in {printed:?}");
    assert!(
        printed.iter().any(|l| l.starts_with("! invalid nickname 'bad\u{FFFD}'")),
        "no /nick error in {printed:?}"
    );
    assert!(
        printed.iter().any(|l| l.ends_with(&format!("<{nick}> last words"))),
        "no echo of the last line in {printed:?}"
    );
}

/// `* N online: a, b` lists nicks sorted case-insensitively.
fn sorted_nicks(nicks: &[&str]) -> String {
    let mut nicks: Vec<&str> = nicks.to_vec();
    nicks.sort_by_key(|n| n.to_lowercase());
    nicks.join(", ")
}

/// chatd never sends control characters, so a stand-in server does: whatever reaches stdout is
/// text, even when stdout is a terminal.
#[test]
fn piped_output_never_carries_control_characters() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let mut child = Command::new(CHATD)
        .args(["client", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn chatd client");
    let (mut conn, _) = listener.accept().expect("the client connects");
    conn.write_all(
        b"\x1b]2;owned\x07\x1b[2Jhello \x1b[31mred\x1b[0m\x08\r\nbell\x07 \xc2\x9b1A\tend\r\n",
    )
    .expect("send");
    // Read what the client says before closing: closing with its goodbye unread would reset
    // the connection, and a reset may discard what the client has not read yet.
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    conn.set_read_timeout(Some(LINE_TIMEOUT)).expect("read timeout");
    let _ = std::io::Read::read_to_end(&mut conn, &mut Vec::new());
    drop(conn);
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    thread::spawn(move || {
        let mut printed = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut printed);
        let _ = tx.send(printed);
    });
    let printed = rx.recv_timeout(LINE_TIMEOUT).expect("the client's stdout to close");
    assert_eq!(String::from_utf8_lossy(&printed), "hello red\nbell \tend\n");
    let status =
        wait_until(START_TIMEOUT, "the client to exit", || child.try_wait().ok().flatten());
    assert!(status.success());
}
