//! The client on a terminal: a line editor for what you type, the room printed above it.
//!
//! The editing is rustyline's (emacs keys: cursor keys, Ctrl-A/E/W/U, Up/Down through what was
//! typed, Ctrl-R to search it). Rustyline is used rather than reedline because its
//! `ExternalPrinter` is what this client needs and little else: another thread hands it a line,
//! and rustyline wakes its input loop through a pipe to clear the input line, print the line
//! and redraw the prompt with the half-typed text and cursor where they were. It brings few
//! dependencies and no terminal framework.
//!
//! One thread runs the editor; the main thread owns the connection and waits on the server's
//! lines and the typed lines together. When the connection is lost the main thread says so,
//! reconnects with [`Backoff`] while the user can go on typing (lines typed meanwhile are not
//! sent, and Up brings them back), and takes the nick back ([`Nick`]). `/quit`, Ctrl-D and
//! Ctrl-C leave; the editor thread stops reading first, so the terminal is back in its normal
//! mode before the client exits.

use super::backoff::Backoff;
use super::nick::{Nick, Reaction};
use super::transport::{Connection, Dialer, FromServer};
use crate::protocol::command::{Command, parse};
use crate::protocol::sanitize::sanitize;
use crossbeam_channel::{Receiver, after, never, select, unbounded};
use nix::sys::termios::{self, SetArg};
use rustyline::error::ReadlineError;
use rustyline::{Config, DefaultEditor, ExternalPrinter};
use signal_hook::consts::{SIGHUP, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

const PROMPT: &str = "> ";

/// How long the server gets to answer a goodbye before the client exits anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the editor thread passes on.
enum Typed {
    Line(String),
    /// Ctrl-D or Ctrl-C.
    End,
    /// The terminal cannot be read.
    Failed(ReadlineError),
}

/// The line editor, ready to run on this process's terminal.
pub(super) struct Terminal {
    editor: DefaultEditor,
    printer: Box<dyn ExternalPrinter + Send>,
}

impl Terminal {
    /// Fails when the terminal cannot be edited (e.g. `TERM=dumb`).
    pub(super) fn new() -> rustyline::Result<Terminal> {
        let config = Config::builder()
            .auto_add_history(true)
            .history_ignore_dups(true)?
            .max_history_size(1000)?
            .build();
        let mut editor = DefaultEditor::with_config(config)?;
        let printer = Box::new(editor.create_external_printer()?);
        Ok(Terminal { editor, printer })
    }

    /// Chats over `connection` (opened by `dialer`, which opens the next ones) until the user
    /// leaves.
    pub(super) fn run(self, dialer: &Dialer, connection: Connection) -> ExitCode {
        restore_terminal_on_signals();
        let typed = spawn_editor(self.editor);
        let mut session = Session { dialer, printer: self.printer, typed, nick: Nick::default() };
        session.run(connection)
    }
}

/// Why a conversation over one connection ended.
enum Ended {
    Left(ExitCode),
    Lost(String),
}

struct Session<'a> {
    dialer: &'a Dialer,
    printer: Box<dyn ExternalPrinter + Send>,
    typed: Receiver<Typed>,
    nick: Nick,
}

impl Session<'_> {
    fn run(&mut self, mut connection: Connection) -> ExitCode {
        loop {
            match self.converse(&mut connection) {
                Ended::Left(code) => return code,
                Ended::Lost(why) => {
                    self.say(&format!(
                        "connection to {} lost ({why}); reconnecting",
                        self.dialer.address()
                    ));
                    self.nick.lost();
                }
            }
            match self.reconnect() {
                Ok(again) => connection = again,
                Err(code) => return code,
            }
        }
    }

    /// Relays between the terminal and one connection until either ends.
    fn converse(&mut self, connection: &mut Connection) -> Ended {
        let mut claim_timer = never();
        let mut claim_later = None;
        loop {
            let sent = select! {
                recv(connection.lines) -> msg => match msg {
                    Ok(FromServer::Line(line)) => {
                        let reaction = self.nick.observe(&line);
                        self.print(&line);
                        match reaction {
                            Reaction::Nothing => Ok(()),
                            Reaction::Claim(nick) => {
                                self.say(&format!("taking back the nick {nick}"));
                                connection.send(&format!("/nick {nick}"))
                            }
                            Reaction::ClaimLater(nick) => {
                                claim_timer = after(self.nick.claim_pause());
                                claim_later = Some(nick);
                                Ok(())
                            }
                            Reaction::GaveUp(nick) => {
                                self.say(&format!("the nick {nick} stays taken; keeping this one"));
                                Ok(())
                            }
                        }
                    }
                    Ok(FromServer::Closed(None)) | Err(_) => {
                        return Ended::Lost("closed by the server".into());
                    }
                    Ok(FromServer::Closed(Some(e))) => return Ended::Lost(e.to_string()),
                },
                recv(self.typed) -> msg => match msg {
                    Ok(Typed::Line(line)) if leaves(&line) => {
                        connection.leave(Some(&line));
                        return Ended::Left(self.wait_for_close(connection));
                    }
                    Ok(Typed::Line(line)) if line.trim().is_empty() => Ok(()),
                    Ok(Typed::Line(line)) => connection.send(&line),
                    Ok(Typed::End) | Err(_) => {
                        connection.leave(None);
                        return Ended::Left(self.wait_for_close(connection));
                    }
                    Ok(Typed::Failed(e)) => {
                        self.say(&format!("cannot read the terminal: {e}"));
                        connection.leave(None);
                        self.wait_for_close(connection);
                        return Ended::Left(ExitCode::FAILURE);
                    }
                },
                recv(claim_timer) -> _ => {
                    claim_timer = never();
                    match claim_later.take() {
                        Some(nick) => {
                            self.nick.claiming_again();
                            connection.send(&format!("/nick {nick}"))
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = sent {
                return Ended::Lost(e.to_string());
            }
        }
    }

    /// Shows the server's last lines after a goodbye until it closes (or does not in time).
    fn wait_for_close(&mut self, connection: &Connection) -> ExitCode {
        let deadline = after(LEAVE_TIMEOUT);
        loop {
            select! {
                recv(connection.lines) -> msg => match msg {
                    Ok(FromServer::Line(line)) => self.print(&line),
                    Ok(FromServer::Closed(_)) | Err(_) => return ExitCode::SUCCESS,
                },
                recv(deadline) -> _ => return ExitCode::SUCCESS,
            }
        }
    }

    /// Connects again, pausing longer after each failure; `Err` when the user leaves meanwhile.
    fn reconnect(&mut self) -> Result<Connection, ExitCode> {
        let mut backoff = Backoff::new();
        let mut pause = backoff.pause();
        loop {
            let timer = after(pause);
            loop {
                select! {
                    recv(timer) -> _ => break,
                    recv(self.typed) -> msg => match msg {
                        Ok(Typed::Line(line)) if leaves(&line) => return Err(ExitCode::SUCCESS),
                        Ok(Typed::Line(line)) if line.trim().is_empty() => {}
                        Ok(Typed::Line(_)) => {
                            self.say("not connected: that line was not sent (Up brings it back)");
                        }
                        Ok(Typed::End) | Err(_) => return Err(ExitCode::SUCCESS),
                        Ok(Typed::Failed(e)) => {
                            self.say(&format!("cannot read the terminal: {e}"));
                            return Err(ExitCode::FAILURE);
                        }
                    },
                }
            }
            match self.dialer.open() {
                Ok(connection) => {
                    self.say(&format!("reconnected to {}", self.dialer.address()));
                    return Ok(connection);
                }
                Err(e) => {
                    pause = backoff.pause();
                    let secs = pause.as_secs_f64();
                    self.say(&format!("cannot connect: {e}; next try in {secs:.1}s"));
                }
            }
        }
    }

    /// A line from the server (already safe to show), above the input line.
    fn print(&mut self, line: &str) {
        // A terminal that cannot be written to is one nobody reads; nothing to do about it.
        let _ = self.printer.print(format!("{line}\n"));
    }

    /// A notice from the client itself, set apart from the server's `*` notices.
    fn say(&mut self, text: &str) {
        self.print(&format!("*** {text}"));
    }
}

/// Whether the server takes `line` as leaving (`/quit [REASON]`, or `quit` on its own), judged
/// by the server's own reading of a line (`src/protocol/command.rs`).
fn leaves(line: &str) -> bool {
    matches!(parse(&sanitize(line.as_bytes())), Ok(Command::Quit(_)))
}

/// Puts the terminal back as it was before the editor took it, then exits, when the client is
/// told to stop (SIGTERM, SIGHUP, SIGQUIT): their default action would end the process with the
/// terminal still in the editor's raw mode, leaving the user's shell without echo. The
/// connection closes with the process, and the room sees the client leave.
fn restore_terminal_on_signals() {
    let stdin = std::io::stdin();
    let Ok(saved) = termios::tcgetattr(&stdin) else { return };
    let Ok(mut signals) = Signals::new([SIGTERM, SIGHUP, SIGQUIT]) else { return };
    thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &saved);
            // The line being typed stays on the screen; the shell's prompt goes below it.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\r\n");
            std::process::exit(128 + signal);
        }
    });
}

/// Reads the terminal on a thread of its own, until the user leaves. Text with line breaks in
/// it (a paste) is passed on line by line, and a leaving line ends the reading there.
fn spawn_editor(mut editor: DefaultEditor) -> Receiver<Typed> {
    let (tx, rx) = unbounded();
    thread::spawn(move || {
        loop {
            let text = match editor.readline(PROMPT) {
                Ok(text) => text,
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => {
                    let _ = tx.send(Typed::End);
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Typed::Failed(e));
                    return;
                }
            };
            for line in text.split('\n') {
                let leaving = leaves(line);
                if tx.send(Typed::Line(line.to_owned())).is_err() || leaving {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_lines_are_those_the_server_takes_as_leaving() {
        for line in ["/quit", "/QUIT bye now", " quit ", "Quit", "/quit\u{7}"] {
            assert!(leaves(line), "{line:?}");
        }
        for line in ["//quit", "quit now", "/quitter", "/nick quit", ""] {
            assert!(!leaves(line), "{line:?}");
        }
    }
}
