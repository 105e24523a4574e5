//! `chatd client` on a real terminal: the binary runs in a tmux pane (`tmux.rs`) against a real
//! `chatd serve`, is typed into key by key and read back from the screen, while an ordinary line
//! client in the same room checks what was actually sent. Covered: the editing keys, the
//! half-typed line surviving incoming lines, history recall, reconnecting after a server restart
//! with the nick taken back, leaving with Ctrl-D and `/quit`, a signal giving the terminal back
//! as it was, and a server's control characters never reaching the terminal; and the same client
//! over TLS (`tls.rs`).

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;
mod tls;
mod tmux;

use common::{Client, LINE_TIMEOUT, START_TIMEOUT, Server, ServerBuilder};
use nix::sys::signal::Signal;
use std::io::Write;
use std::net::TcpListener;
use tmux::{PROMPT, Tmux};

fn server() -> Server {
    ServerBuilder::new().workers(2).chat_key("history_on_join = 0").start()
}

/// A client in a terminal, and an observer in the room that has seen it join; with the
/// client's nick.
fn client_and_observer(server: &Server) -> (Tmux, Client, String) {
    let (observer, _, term, nick) = observer_and_client(server);
    (term, observer, nick)
}

/// [`client_and_observer`], with the observer's nick too.
fn observer_and_client(server: &Server) -> (Client, String, Tmux, String) {
    let (mut observer, observer_nick, _) = server.join("observer");
    let term = Tmux::client(&server.addr().to_string());
    let nick = welcome_nick(&term);
    observer.expect_line(&format!("* {nick} joined (2 online)"));
    (observer, observer_nick, term, nick)
}

/// The nick from the welcome line on the screen.
pub(crate) fn welcome_nick(term: &Tmux) -> String {
    let welcome = term.wait_for_text("* Welcome to chatd. You are ");
    let rest = welcome.split("You are ").nth(1).expect("a nick");
    rest.split('.').next().expect("a nick").to_owned()
}

#[test]
fn editing_keys_change_the_line_that_is_sent() {
    let server = server();
    let (term, mut observer, nick) = client_and_observer(&server);

    // Ctrl-A and Ctrl-E: to the start and back to the end.
    term.type_text("world");
    term.press(&["C-a"]);
    term.type_text("hello ");
    term.press(&["C-e"]);
    term.enter("!");
    observer.expect_chat(&nick, "hello world!");

    // Cursor keys.
    term.type_text("helo wrld");
    term.press(&["Left", "Left", "Left"]);
    term.type_text("o");
    term.press(&["C-a", "Right", "Right", "Right"]);
    term.enter("l");
    observer.expect_chat(&nick, "hello world");

    // Ctrl-W: the word before the cursor.
    term.type_text("one two three");
    term.press(&["C-w"]);
    term.enter("four");
    observer.expect_chat(&nick, "one two four");

    // Ctrl-U: everything before the cursor.
    term.type_text("scrap this keep");
    term.press(&["Left", "Left", "Left", "Left", "C-u", "C-e"]);
    term.enter("!");
    observer.expect_chat(&nick, "keep!");
}

#[test]
fn the_half_typed_line_stays_intact_while_lines_arrive() {
    let server = server();
    let (mut observer, observer_nick, term, nick) = observer_and_client(&server);

    // Half a line, with the cursor in its middle.
    term.type_text("half-typed mesage");
    term.press(&["Left", "Left", "Left"]);
    let typed = format!("{PROMPT}half-typed mesage");
    let column = PROMPT.len() + "half-typed mes".len();
    term.wait_for_input(&typed, column);

    for i in 1..=5 {
        observer.send_line(&format!("incoming {i}"));
    }
    // The five lines, in order, above the input line, which is still the last and unbroken.
    let last = format!("<{observer_nick}> incoming 5");
    let lines = term.wait_for("the 5th incoming line above the input line", |lines| {
        lines.iter().any(|l| l.ends_with(&last)) && lines.last() == Some(&typed)
    });
    let incoming: Vec<usize> = (1..=5)
        .map(|i| {
            let text = format!("<{observer_nick}> incoming {i}");
            lines.iter().position(|l| l.ends_with(&text)).expect("every incoming line")
        })
        .collect();
    assert!(incoming.windows(2).all(|w| w[0] < w[1]), "out of order: {lines:?}");
    let broken = lines.iter().filter(|l| l.contains("half-typed")).count();
    assert_eq!(broken, 1, "the half-typed line was printed more than once: {lines:?}");
    assert_eq!((term.input_line(), term.cursor().0), (typed, column), "the cursor moved");

    // Finishing it sends the whole line: the editor's buffer was kept, not only the display.
    term.type_text("s");
    term.enter("");
    observer.read_until(LINE_TIMEOUT, |l| l.contains("incoming 5")).expect("own echo");
    observer.expect_chat(&nick, "half-typed message");
}

#[test]
fn up_recalls_what_was_typed() {
    let server = server();
    let (term, mut observer, nick) = client_and_observer(&server);
    term.enter("first line");
    term.enter("second line");
    observer.expect_chat(&nick, "first line");
    observer.expect_chat(&nick, "second line");

    term.press(&["Up"]);
    term.wait_for_input("> second line", "> second line".len());
    term.press(&["Up"]);
    term.wait_for_input("> first line", "> first line".len());
    term.press(&["Down"]);
    term.wait_for_input("> second line", "> second line".len());
    term.press(&["Up"]);
    term.enter(" again");
    observer.expect_chat(&nick, "first line again");
}

#[test]
fn reconnects_after_a_server_restart_and_takes_its_nick_back() {
    let mut server = server();
    let port = server.port();
    let term = Tmux::client(&server.addr().to_string());
    welcome_nick(&term);
    term.enter("/nick alice");
    term.wait_for_text("is now known as alice");

    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(START_TIMEOUT).success());
    term.wait_for_text(&format!("*** connection to 127.0.0.1:{port} lost"));
    drop(server);

    let listen = format!("127.0.0.1:{port}");
    let server = ServerBuilder::new().listen(&[&listen]).workers(2).start();
    term.wait_for_text(&format!("*** reconnected to 127.0.0.1:{port}"));
    term.wait_for("the nick taken back", |lines| {
        lines.iter().filter(|l| l.contains("is now known as alice")).count() == 2
    });

    let (mut observer, observer_nick, _) = server.join("observer");
    observer.send_line("/who");
    let mut both = [observer_nick.as_str(), "alice"];
    both.sort_by_key(|n| n.to_lowercase());
    observer.expect_line(&format!("* 2 online: {}", both.join(", ")));
    term.enter("still alice");
    observer.expect_chat("alice", "still alice");
}

#[test]
fn ctrl_d_leaves() {
    let server = server();
    let (term, mut observer, nick) = client_and_observer(&server);
    term.press(&["C-d"]);
    observer.expect_line(&format!("* {nick} left (quit)"));
    assert_eq!(term.wait_exit(), "exit 0");
}

#[test]
fn quit_leaves_with_its_reason() {
    let server = server();
    let (term, mut observer, nick) = client_and_observer(&server);
    term.type_text("/quit see you");
    term.press(&["Enter"]);
    observer.expect_line(&format!("* {nick} left (quit: see you)"));
    assert_eq!(term.wait_exit(), "exit 0");
}

/// Told to stop by a signal while editing, the client gives the terminal back as it found it
/// (not in the editor's raw mode, which would leave the shell without echo), and its connection
/// ends, so the room sees it leave.
#[test]
fn a_signal_leaves_the_terminal_as_it_was() {
    let server = server();
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let (term, mut observer, nick) = client_and_observer(&server);
        term.type_text("half typed");
        term.wait_for_input("> half typed", 12);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(term.client_pid()), signal)
            .expect("signal the client");
        observer.expect_line(&format!("* {nick} left (connection closed)"));
        let (ended, restored) = term.wait_exit_and_terminal();
        assert_eq!(ended, format!("signal {}", signal as i32), "{signal}");
        assert!(restored, "{signal}: the terminal was left in the editor's mode");
    }
}

/// chatd itself never sends control characters, so a stand-in server does: an escape sequence
/// that would clear the screen, one that would retitle the window, a bell.
#[test]
fn control_characters_from_the_server_never_reach_the_terminal() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let term = Tmux::client(&addr.to_string());
    let (mut conn, _) = listener.accept().expect("the client connects");
    conn.write_all(b"before\r\n\x1b]2;owned\x07\x1b[2J\x1b[Hafter \x1b[31mred\x1b[0m\x07\r\n")
        .expect("send");
    term.wait_for_text("after");
    let screen = term.screen();
    assert!(screen.iter().any(|l| l == "before"), "the screen was cleared: {screen:?}");
    assert!(screen.iter().any(|l| l == "after red"), "not shown as text: {screen:?}");
    assert_ne!(term.format("#{pane_title}"), "owned", "the server retitled the terminal");
}
