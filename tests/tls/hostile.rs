//! Hostile and broken clients on the TLS port: each is closed with the right reaction (an
//! alert where TLS has one), counted in `chatd_rejected_total{reason="tls"}` when its handshake
//! never finished, and nothing reaches the room: a plain client there reads only what it
//! expects.

use crate::*;

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"";

/// A server with a 1 s handshake timeout and metrics, and a plain client in its room.
fn server_with_watcher() -> (tempfile::TempDir, Pki, Server, Client) {
    let (dir, pki, cert, key) = pki();
    let builder = room::room_server(2).raw(METRICS);
    let server = start_tls(builder, &cert, &key, &["handshake_timeout = \"1s\""]);
    let (watcher, _, _) = server.join("watcher");
    (dir, pki, server, watcher)
}

/// The watcher's next line is its own marker: nothing reached the room meanwhile.
fn nothing_reached(server: &Server, watcher: &mut Client, tag: &str) {
    let (mut other, nick, _) = server.join(tag);
    watcher.expect_line(&format!("* {nick} joined (2 online)"));
    other.send_line("/quit");
    watcher.expect_line(&format!("* {nick} left (quit)"));
}

/// Plaintext and garbage on the TLS port, a TLS 1.2-only client and a stalled handshake are
/// all closed before joining, and counted.
#[test]
fn failed_handshakes_are_closed_and_counted() {
    let (_dir, pki, server, mut watcher) = server_with_watcher();
    let addr = tls_addr(&server);

    let mut plaintext = TcpStream::connect(addr).unwrap();
    plaintext.write_all(b"hello, is this chat?\n").unwrap();
    let (got, ended) = read_to_end(&mut plaintext, LINE_TIMEOUT);
    assert!(ended && got.is_empty(), "plaintext: closed with nothing sent, got {got:?}");

    let mut garbage = TcpStream::connect(addr).unwrap();
    // A handshake record holding a message that is no ClientHello.
    garbage.write_all(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]).unwrap();
    let (got, ended) = read_to_end(&mut garbage, LINE_TIMEOUT);
    assert!(ended, "garbage: closed");
    assert_eq!(got.first(), Some(&21), "garbage: answered with an alert record: {got:?}");

    let old = Tool::s_client(addr, &pki.ca, &["-tls1_2"]).finish();
    assert!(
        old.iter().any(|l| l.contains("alert protocol version")),
        "TLS 1.2 client: protocol_version alert expected: {old:#?}"
    );

    // Half a ClientHello, then silence: closed after the 1 s handshake timeout.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(&[22, 3, 1, 1, 0, 1, 0]).unwrap();
    let started = Instant::now();
    let (got, ended) = read_to_end(&mut stalled, LINE_TIMEOUT);
    assert!(ended && got.is_empty(), "stalled handshake closed: {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(500), "closed before the timeout");

    assert!(tls_rejections(&server, 4.0) >= 4.0);
    nothing_reached(&server, &mut watcher, "marker");
}

/// After the handshake: a 16 KB record of junk is answered with a `bad_record_mac` alert and
/// the connection closed (the room sees the client lost); a KeyUpdate flood is cut likewise.
#[test]
fn bad_records_and_key_update_floods_end_the_session() {
    let (_dir, pki, server, mut watcher) = server_with_watcher();
    let addr = tls_addr(&server);

    let script = format!(
        r#"
import socket, ssl, os
ctx = ssl.create_default_context(cafile={ca:?})
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="127.0.0.1",
                    suppress_ragged_eofs=False)
s.settimeout(20)
print("welcome", s.recv(4096).decode().strip(), flush=True)
input()
junk = bytes([23, 3, 3, 0x40, 0x00]) + os.urandom(0x4000)
os.write(s.fileno(), junk)
try:
    while s.recv(4096):
        pass
    print("closed without an alert")
except ssl.SSLError as e:
    print("alert", e)
"#,
        ca = pki.ca.display().to_string(),
        port = addr.port()
    );
    let mut junk = Tool::start("python3", &["-c", &script]);
    let nick = parse_welcome(junk.expect("welcome").trim_start_matches("welcome ")).unwrap().0;
    watcher.expect_line(&format!("* {nick} joined (2 online)"));
    junk.send("go");
    let alert = junk.expect("alert");
    assert!(alert.to_lowercase().contains("bad record mac"), "{alert}");
    watcher.expect_line(&format!("* {nick} left (connection lost)"));

    let mut flood = Tool::s_client(addr, &pki.ca, &[]);
    let nick = parse_welcome(&flood.expect("* Welcome")).unwrap().0;
    watcher.expect_line(&format!("* {nick} joined (2 online)"));
    // One at a time: s_client acts on a `k` line only when it is alone in its read.
    for _ in 0..33 {
        flood.send("k");
        flood.expect("KEYUPDATE");
    }
    watcher.expect_line(&format!("* {nick} left (connection lost)"));
    let seen = flood.finish();
    assert!(seen.iter().any(|l| l.contains("unexpected message")), "{seen:#?}");
    nothing_reached(&server, &mut watcher, "marker");
}
