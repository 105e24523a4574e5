//! Real TLS clients in the room beside plain ones: Python's `ssl`, `openssl s_client` with
//! KeyUpdates, `socat`; what `status`, `who` and the log say; close_notify both ways; the
//! certificate checks of `check-config` and `reload`.

use crate::*;

/// A TLS client (Python `ssl`) and a plain one chat: both read the same lines in the same
/// order, joins included; `who` and `status` tell the transports apart; `/quit` ends the TLS
/// session with close_notify.
#[test]
fn tls_and_plain_clients_share_the_room() {
    let (_dir, pki, cert, key) = pki();
    let server = tls_server(2, &cert, &key, &[]);
    assert!(
        server.log_contains(&format!("listening on {} (tls) with 2 workers", tls_addr(&server)))
    );
    let bridge = TlsBridge::start(&pki.ca, tls_addr(&server));

    let mut tls = bridge.connect("tls");
    let (tls_nick, count) = tls.expect_welcome();
    assert_eq!(count, 1);
    let (mut plain, plain_nick, _) = server.join("plain");
    tls.expect_line(&format!("* {plain_nick} joined (2 online)"));

    for i in 0..5 {
        tls.send_line(&format!("from tls {i}"));
        plain.send_line(&format!("from plain {i}"));
    }
    let mut orders = Vec::new();
    for c in [&mut tls, &mut plain] {
        let lines: Vec<String> = (0..10).map(|_| c.next_line()).collect();
        orders.push(lines);
    }
    assert_eq!(orders[0], orders[1], "one order for both");
    for i in 0..5 {
        assert!(orders[0].iter().any(|l| l.ends_with(&format!("<{tls_nick}> from tls {i}"))));
        assert!(orders[0].iter().any(|l| l.ends_with(&format!("<{plain_nick}> from plain {i}"))));
    }

    let who = server.run(&["who", "--json"], LINE_TIMEOUT);
    let who = output_text(&who);
    let entries: serde_json::Value = serde_json::from_str(who.trim()).expect("who --json");
    let transport = |nick: &str| {
        entries
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["nick"] == nick)
            .map(|e| e["transport"].clone())
    };
    assert_eq!(transport(&tls_nick), Some("tls".into()), "{who}");
    assert_eq!(transport(&plain_nick), Some("tcp".into()), "{who}");
    let status = output_text(&server.run(&["status", "--json"], LINE_TIMEOUT));
    let status: serde_json::Value = serde_json::from_str(status.trim()).expect("status --json");
    assert_eq!(status["tls_listen"], serde_json::json!([tls_addr(&server).to_string()]));
    assert_eq!(status["listen"], serde_json::json!([server.addr().to_string()]));
    assert!(output_text(&server.run(&["status"], LINE_TIMEOUT)).contains("tls: listening on"));

    tls.send_line("/quit");
    plain.expect_line(&format!("* {tls_nick} left (quit)"));
    assert_eq!(bridge.wait_closed(LINE_TIMEOUT), "1 clean", "close_notify after the last line");
}

/// `openssl s_client`: a `k` line sends a KeyUpdate, `K` one that asks chatd to update too;
/// the session goes on both times, in both directions.
#[test]
fn openssl_s_client_key_updates_keep_the_session() {
    let (_dir, pki, cert, key) = pki();
    let server = tls_server(1, &cert, &key, &[]);
    let (mut plain, _, _) = server.join("plain");
    let mut s = Tool::s_client(tls_addr(&server), &pki.ca, &[]);
    let welcome = s.expect("* Welcome to chatd. You are ");
    let nick = parse_welcome(&welcome).expect("welcome").0;
    plain.expect_line(&format!("* {nick} joined (2 online)"));
    for (i, key_update) in ["k", "K", "k"].iter().enumerate() {
        s.send(key_update);
        s.expect("KEYUPDATE");
        s.send(&format!("after update {i}"));
        s.expect(&format!("<{nick}> after update {i}"));
        plain.expect_chat(&nick, &format!("after update {i}"));
        plain.send_line(&format!("to s_client {i}"));
        s.expect(&format!("> to s_client {i}"));
        plain.next_line();
    }
    s.finish();
    plain.expect_line(&format!("* {nick} left (connection closed)"));
}

/// `socat - OPENSSL:…` chats both ways.
#[test]
fn socat_chats() {
    let (_dir, pki, cert, key) = pki();
    let server = tls_server(1, &cert, &key, &[]);
    let (mut plain, _, _) = server.join("plain");
    let target = format!("OPENSSL:{},cafile={}", tls_addr(&server), pki.ca.display());
    let mut socat = Tool::start("socat", &["-", &target]);
    let nick = parse_welcome(&socat.expect("* Welcome")).expect("welcome").0;
    plain.expect_line(&format!("* {nick} joined (2 online)"));
    socat.send("hello over socat");
    plain.expect_chat(&nick, "hello over socat");
    plain.send_line("hello back");
    plain.next_line();
    socat.expect("hello back");
    socat.send("/quit");
    plain.expect_line(&format!("* {nick} left (quit)"));
}

/// A certificate with the wrong key, or a missing file: `check-config` says which, `serve`
/// refuses to start, and a reload to it fails and changes nothing (new TLS clients still get
/// the old certificate).
#[test]
fn a_bad_certificate_pair_is_a_config_error() {
    let (dir, pki, cert, key) = pki();
    let (_, other_key) = pki.issue("other", 2);
    let config = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\ncontrol_socket = {:?}\n\n{}",
            dir.path().join("c.sock").display().to_string(),
            tls_table(cert, key, &[])
        )
    };
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config(&cert, &other_key)).unwrap();
    let out = run_chatd(&["check-config", "--config", path.to_str().unwrap()], LINE_TIMEOUT);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("is not the private key of the certificate"),
        "{}",
        output_text(&out)
    );
    std::fs::write(&path, config(&cert, &dir.path().join("missing.key"))).unwrap();
    let out = run_chatd(&["check-config", "--config", path.to_str().unwrap()], LINE_TIMEOUT);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("tls.key"), "{}", output_text(&out));
    let serve = run_chatd(&["serve", "--config", path.to_str().unwrap()], LINE_TIMEOUT);
    assert!(!serve.status.success(), "serve with a missing key");

    let server = tls_server(1, &cert, &key, &[]);
    let text = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(
        server.config_path(),
        text.replace(key.to_str().unwrap(), other_key.to_str().unwrap()),
    )
    .unwrap();
    let out = server.run(&["reload"], LINE_TIMEOUT);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("is not the private key"), "{}", output_text(&out));
    let mut s = Tool::s_client(tls_addr(&server), &pki.ca, &[]);
    s.expect("Verify return code: 0 (ok)");
    s.expect("* Welcome to chatd.");
}
