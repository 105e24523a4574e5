//! One web session at a time: the page, the 404, a web client and TCP clients in one room,
//! commands from the web, wss with a throwaway CA, and how a session's close is framed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::{room_server, start_web, web_addr};

/// Sends one HTTP request; returns the answer's head and body, read to EOF (the server closes
/// after answering).
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(request.as_bytes()).expect("send");
    let (head, mut body) = read_head(&mut s).expect("an HTTP answer");
    s.set_read_timeout(Some(LINE_TIMEOUT)).expect("timeout");
    s.read_to_end(&mut body).expect("the body, then EOF");
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn the_page_at_slash_and_404_elsewhere() {
    let server = start_web(room_server(2), None);
    let (head, body) = http_get(web_addr(&server), "/");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Type: text/html; charset=utf-8"), "{head}");
    assert!(body.contains("<html") && body.contains("</html>"), "{body}");
    let (head, _) = http_get(web_addr(&server), "/index.html");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    // Nothing of that reached the room.
    let (_a, _, n) = server.join("tcp");
    assert_eq!(n, 1);
}

#[test]
fn web_and_tcp_clients_share_one_room_and_its_commands() {
    let server = start_web(room_server(2), None);
    let (mut a, a_nick, _) = server.join("tcp");
    let mut w = WsClient::connect(web_addr(&server), "web");
    let (w_nick, count) = parse_welcome(&w.next_line()).expect("a welcome");
    assert_eq!(count, 2);
    a.expect_line(&format!("* {w_nick} joined (2 online)"));
    w.send_line("/nick webby");
    w.expect_line(&format!("* {w_nick} is now known as webby"));
    a.expect_line(&format!("* {w_nick} is now known as webby"));
    // Interleaved talk arrives in one order for both.
    for i in 0..5 {
        a.send_line(&format!("from tcp {i}"));
        w.send_line(&format!("from web {i}"));
    }
    let lines_a: Vec<String> = (0..10).map(|_| a.next_line()).collect();
    let lines_w: Vec<String> = (0..10).map(|_| w.next_line()).collect();
    assert_eq!(lines_a, lines_w);
    let texts: Vec<(String, String)> = lines_w
        .iter()
        .map(|l| parse_chat(l).map(|c| (c.nick, c.text)).expect("a chat line"))
        .collect();
    for i in 0..5 {
        let from_tcp = texts.iter().position(|t| *t == (a_nick.clone(), format!("from tcp {i}")));
        let from_web = texts.iter().position(|t| *t == ("webby".into(), format!("from web {i}")));
        assert!(from_tcp.is_some() && from_web.is_some(), "{texts:?}");
    }
    w.send_line("/me waves");
    assert!(w.next_line().ends_with(" * webby waves"));
    assert!(a.next_line().ends_with(" * webby waves"));
    w.send_line(&format!("/msg {a_nick} psst"));
    assert!(w.next_line().contains("psst"));
    assert!(a.next_line().contains("psst"));
    w.send_line("/who");
    let who = w.next_line();
    assert!(who.contains("2 online") && who.contains("webby") && who.contains(&a_nick), "{who}");
    // An operator sees it as a web session; status lists the web address.
    let out = server.run(&["who"], Duration::from_secs(30));
    let text = output_text(&out);
    let row = text.lines().find(|l| l.starts_with("webby ")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.split_whitespace().any(|f| f == "web"), "{row}");
    let out = server.run(&["status", "--json"], Duration::from_secs(30));
    let status = output_text(&out);
    assert!(status.contains(&format!("\"web_listen\":[\"{}\"]", web_addr(&server))), "{status}");
    // `{addr}` and the leave: the web client quits; its close is 1000.
    w.send_line("/quit");
    assert_eq!(w.expect_close(), 1000);
    a.expect_line("* webby left (quit)");
}

#[test]
fn a_shutdown_closes_web_sessions_with_going_away() {
    let server = start_web(room_server(1), None);
    let mut w = WsClient::connect(web_addr(&server), "web");
    w.next_line();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    w.expect_line("* server shutting down");
    assert_eq!(w.expect_close(), 1001);
}

#[test]
fn wss_with_a_throwaway_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("server", 1);
    let server = start_web(room_server(2), Some((&cert, &key)));
    let bridge = TlsBridge::start(&pki.ca, web_addr(&server));
    let (head, body) = http_get(bridge.addr, "/");
    assert!(head.starts_with("HTTP/1.1 200 ") && body.contains("</html>"), "{head}");
    let (mut a, a_nick, _) = server.join("tcp");
    let mut w = WsClient::connect(bridge.addr, "wss");
    let (w_nick, _) = parse_welcome(&w.next_line()).expect("a welcome");
    a.expect_line(&format!("* {w_nick} joined (2 online)"));
    w.send_line("over wss");
    a.expect_chat(&w_nick, "over wss");
    w.expect_chat_line(&w_nick, "over wss");
    a.send_line("back over tcp");
    w.expect_chat_line(&a_nick, "back over tcp");
    let out = server.run(&["who"], Duration::from_secs(30));
    let text = output_text(&out);
    assert!(text.lines().any(|l| l.starts_with(&w_nick) && l.contains("web+tls")), "{text}");
    w.send_line("/quit");
    assert_eq!(w.expect_close(), 1000);
    let how = bridge.wait_closed(LINE_TIMEOUT);
    assert!(how.ends_with(" clean"), "close_notify after the close frame: {how}");
}

/// An HTTP request not done within `tls.handshake_timeout` is closed, unanswered.
#[test]
fn a_stalled_request_is_closed_after_the_opening_timeout() {
    let server = start_web(room_server(1).raw("[tls]\nhandshake_timeout = \"1s\""), None);
    let mut s = TcpStream::connect_timeout(&web_addr(&server), CONNECT_TIMEOUT).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n").expect("half a request");
    s.set_read_timeout(Some(LINE_TIMEOUT)).expect("timeout");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("EOF, not a read timeout");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
