//! `chatd client --tls` on a terminal, through a socat TLS terminator in front of a real chatd:
//! what is typed reaches a plain client in the room, and after a lost connection the client
//! reconnects over TLS, saying why an attempt failed (a certificate not trusted is retried like
//! a server that is away), and takes its nick back. Then with chatd's own TLS listener, across a
//! reload.

use super::common::{
    Certificates, LINE_TIMEOUT, START_TIMEOUT, ServerBuilder, TlsRelay, output_text, start_tls,
    tls_addr,
};
use super::tmux::Tmux;
use super::welcome_nick;

#[test]
fn a_line_typed_over_tls_reaches_a_plain_client() {
    let server = ServerBuilder::new().workers(2).chat_key("history_on_join = 0").start();
    let pki = Certificates::new();
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let (mut observer, observer_nick, _) = server.join("observer");
    let ca = pki.ca.to_str().expect("utf-8 path");
    let term = Tmux::client_with(&["--tls", "--ca", ca, &relay.addr().to_string()]);
    let nick = welcome_nick(&term);
    observer.expect_line(&format!("* {nick} joined (2 online)"));

    term.enter("typed over tls");
    observer.expect_chat(&nick, "typed over tls");
    observer.send_line("seen in the clear");
    term.wait_for_text(&format!("<{observer_nick}> seen in the clear"));

    term.type_text("/quit done");
    term.press(&["Enter"]);
    observer
        .read_until(LINE_TIMEOUT, |l| l == format!("* {nick} left (quit: done)"))
        .expect("leave");
    assert_eq!(term.wait_exit(), "exit 0");
}

#[test]
fn reconnects_over_tls_after_an_untrusted_attempt_and_takes_its_nick_back() {
    let server = ServerBuilder::new().workers(2).chat_key("history_on_join = 0").start();
    let (pki, impostor) = (Certificates::new(), Certificates::new());
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let address = relay.addr().to_string();
    let ca = pki.ca.to_str().expect("utf-8 path");
    let term = Tmux::client_with(&["--tls", "--ca", ca, &address]);
    welcome_nick(&term);
    term.enter("/nick alice");
    term.wait_for_text("is now known as alice");

    // The terminator goes away without a TLS goodbye; in its place comes one whose certificate
    // the client does not trust, then the right one again.
    let port = relay.addr().port();
    drop(relay);
    term.wait_for_text(&format!("*** connection to {address} lost ("));
    let relay = TlsRelay::start(&impostor, server.addr(), port);
    term.wait_for_text("cannot connect: TLS: certificate not trusted (invalid peer certificate: ");
    drop(relay);
    let _relay = TlsRelay::start(&pki, server.addr(), port);
    term.wait_for_text(&format!("*** reconnected to {address}"));
    term.wait_for("the nick taken back", |lines| {
        lines.iter().filter(|l| l.contains("is now known as alice")).count() == 2
    });

    let (mut observer, _, _) = server.join("observer");
    term.enter("still alice, still encrypted");
    observer.expect_chat("alice", "still alice, still encrypted");
}

/// The same over chatd's own TLS listener, and a reload in the middle: the session moves to a
/// new worker with its TLS state and the client goes on without noticing.
#[test]
fn a_session_with_chatds_own_tls_survives_a_reload() {
    let certs = Certificates::new();
    let builder = ServerBuilder::new().workers(2).chat_key("history_on_join = 0");
    let server = start_tls(builder, &certs.cert, &certs.key, &[]);
    let (mut observer, _, _) = server.join("observer");
    let ca = certs.ca.to_str().expect("utf-8 path");
    let term = Tmux::client_with(&["--tls", "--ca", ca, &tls_addr(&server).to_string()]);
    let nick = welcome_nick(&term);
    observer.expect_line(&format!("* {nick} joined (2 online)"));
    term.enter("before the reload");
    observer.expect_chat(&nick, "before the reload");

    let reload = server.run(&["reload"], START_TIMEOUT);
    assert!(reload.status.success(), "{}", output_text(&reload));
    term.enter("after the reload");
    observer.expect_chat(&nick, "after the reload");
    let lines = term.lines();
    assert!(!lines.iter().any(|l| l.starts_with("***")), "the client noticed: {lines:?}");
}
