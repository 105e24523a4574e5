//! `chatd client --tls` as a filter (stdin a pipe), against a real chatd behind a real TLS
//! terminator (socat, `tests/common/tls_relay.rs`) with a throwaway CA (`tests/common/tls.rs`):
//! lines go through both ways, the certificate is checked against `--ca` or the system's store,
//! a certificate that is not trusted is a clear error, `--insecure` accepts it with a warning.
//! A stand-in server of the test's own (rustls) shows what the client does at the TLS level, and
//! one test uses chatd's own `[tls]` listener.

mod common;

use common::{
    CHATD, Certificates, LINE_TIMEOUT, Server, ServerBuilder, TlsRelay, start_tls, tls_addr,
    wait_until,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;

fn server() -> Server {
    ServerBuilder::new().workers(1).chat_key("history_on_join = 0").start()
}

/// What a run of the client did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `chatd client ARGS…` with `input` on its stdin until it exits.
fn client(args: &[&str], input: &str, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(CHATD)
        .arg("client")
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd client");
    let read = |mut stream: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let mut stdin = child.stdin.take().expect("stdin");
    // The client may exit before reading its input (a refused certificate).
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let status = wait_until(LINE_TIMEOUT, "the client to exit", || child.try_wait().ok().flatten());
    Run { status, stdout: stdout.join().expect("stdout"), stderr: stderr.join().expect("stderr") }
}

#[test]
fn piped_lines_go_both_ways_over_tls() {
    let server = server();
    let pki = Certificates::new();
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let (mut observer, observer_nick, _) = server.join("observer");
    let ca = pki.ca.to_str().expect("utf-8 path");
    // The certificate names 127.0.0.1 (an IP SAN) and localhost (a DNS SAN): both are checked.
    for host in ["127.0.0.1", "localhost"] {
        let address = format!("{host}:{}", relay.addr().port());
        let run = client(&["--tls", "--ca", ca, &address], "over tls\n/who\n", &[]);
        assert!(run.status.success(), "{host}: {} / {}", run.status, run.stderr);
        let joined = observer.read_until(LINE_TIMEOUT, |l| l.ends_with(" joined (2 online)"));
        let nick = joined.expect("the client joins").split(' ').nth(1).unwrap().to_owned();
        observer.expect_chat(&nick, "over tls");
        observer.expect_line(&format!("* {nick} left (quit)"));
        let printed: Vec<&str> = run.stdout.lines().collect();
        assert!(printed[0].starts_with("* Welcome to chatd."), "{host}: {printed:?}");
        assert!(printed.iter().any(|l| l.ends_with(&format!("<{nick}> over tls"))), "{printed:?}");
        assert!(printed.iter().any(|l| l.contains(&observer_nick)), "no /who answer: {printed:?}");
        assert!(run.stderr.is_empty(), "{host}: {}", run.stderr);
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused_clearly() {
    let server = server();
    let (pki, other) = (Certificates::new(), Certificates::new());
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let address = relay.addr().to_string();
    let run = client(&["--tls", "--ca", other.ca.to_str().unwrap(), &address], "hello\n", &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    // The test CAs share their name, so rustls finds the issuer and then a bad signature.
    let reason = run.stderr.trim_end().strip_prefix(&format!(
        "chatd client: cannot connect to {address}: TLS: certificate not trusted \
         (invalid peer certificate: "
    ));
    assert!(matches!(reason, Some("BadSignature)" | "UnknownIssuer)")), "{}", run.stderr);
    assert_eq!(run.stdout, "", "nothing was received");
}

/// Without `--ca` the system's store is used; `SSL_CERT_FILE` points it at the test CA (which
/// is how `rustls-native-certs` lets an operator choose the store), and without that the test
/// CA is trusted by nothing.
#[test]
fn the_systems_store_is_used_without_ca() {
    let server = server();
    let pki = Certificates::new();
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let address = relay.addr().to_string();
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", &address], "via the store\n", &[("SSL_CERT_FILE", ca)]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("> via the store"), "{}", run.stdout);

    let run = client(&["--tls", &address], "hello\n", &[]);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("TLS: certificate not trusted"), "{}", run.stderr);
}

#[test]
fn insecure_accepts_any_certificate_and_says_so() {
    let server = server();
    let pki = Certificates::new();
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let (mut observer, _, _) = server.join("observer");
    let address = relay.addr().to_string();
    let run = client(&["--tls", "--insecure", &address], "unchecked\n", &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let joined = observer.read_until(LINE_TIMEOUT, |l| l.ends_with(" joined (2 online)"));
    let nick = joined.expect("the client joins").split(' ').nth(1).unwrap().to_owned();
    observer.expect_chat(&nick, "unchecked");
    assert!(
        run.stderr.starts_with(
            "chatd client: warning: --insecure: the server's certificate is not checked"
        ),
        "{}",
        run.stderr
    );
}

/// `--tls` to a port that speaks plain TCP fails the handshake with a hint, not a hang.
#[test]
fn tls_to_a_plain_port_says_so() {
    let server = server();
    let address = server.addr().to_string();
    let run = client(&["--tls", "--insecure", &address], "hello\n", &[]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("TLS: the server's answer is not TLS 1.3 (a plain port?)"),
        "{}",
        run.stderr
    );
}

/// A TLS server of the test's own (rustls) that serves one connection with `serve`, so what the
/// client sends at the TLS level can be seen: the bytes, and how it ends.
fn stand_in_server(
    pki: &Certificates,
    serve: impl FnOnce(&mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) + Send + 'static,
) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    stand_in_server_with(pki, None, serve)
}

/// [`stand_in_server`] with the receive buffer of its socket set to `receive_buffer` bytes (the
/// kernel then does not grow it), so what the client sends stops soon when it is not read.
fn stand_in_server_with(
    pki: &Certificates,
    receive_buffer: Option<usize>,
    serve: impl FnOnce(&mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) + Send + 'static,
) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_file_iter(&pki.cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    if let Some(size) = receive_buffer {
        // Set on the listener, so the accepted socket has it from its handshake on.
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::RcvBuf, &size)
            .expect("SO_RCVBUF");
    }
    let addr = listener.local_addr().expect("local addr");
    let handle = thread::spawn(move || {
        let (socket, _) = listener.accept().expect("the client connects");
        socket.set_read_timeout(Some(LINE_TIMEOUT)).expect("read timeout");
        let session = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        serve(&mut rustls::StreamOwned::new(session, socket));
    });
    (addr, handle)
}

/// At the end of its input the client sends its lines, `/quit`, then close_notify (its TLS
/// goodbye, not just a TCP FIN), and exits 0 once the server said its own close_notify.
#[test]
fn the_client_says_goodbye_with_close_notify() {
    let pki = Certificates::new();
    let (addr, server) = stand_in_server(&pki, |tls| {
        tls.write_all(b"* hello from the stand-in\r\n").unwrap();
        let mut received = Vec::new();
        // Ok(0) only after close_notify; a bare FIN is an UnexpectedEof error.
        tls.read_to_end(&mut received).expect("the client ends with close_notify");
        assert_eq!(String::from_utf8_lossy(&received), "last line\n/quit\n");
        tls.write_all(b"* bye\r\n").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", "--ca", ca, &addr.to_string()], "last line\n", &[]);
    server.join().expect("the stand-in's checks");
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout, "* hello from the stand-in\n* bye\n");
}

/// A server that ends the TCP stream without close_notify may have been cut short by someone
/// on the way: in a pipe that is a failure, told as such, after what did arrive.
#[test]
fn an_end_without_close_notify_is_a_failure() {
    let pki = Certificates::new();
    let (addr, server) = stand_in_server(&pki, |tls| {
        // Everything the client says is read first: closing with it unread would reset the
        // connection, and a reset may discard what the client has not read yet.
        tls.read_to_end(&mut Vec::new()).expect("the client's goodbye");
        tls.write_all(b"* cut short\r\n").unwrap();
        tls.flush().unwrap();
        tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", "--ca", ca, &addr.to_string()], "", &[]);
    server.join().expect("the stand-in");
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert_eq!(run.stdout, "* cut short\n");
    assert_eq!(
        run.stderr.trim_end(),
        "chatd client: connection lost: TLS: the server closed the connection without close_notify"
    );
}

/// A megabyte of input in one go, through socat to chatd: every line arrives whole, in order,
/// and the client exits at the end.
#[test]
fn a_large_input_goes_through_whole() {
    let server = ServerBuilder::new()
        .workers(1)
        .chat_key("history_on_join = 0")
        .chat_key("rate_limit = { messages = 0 }")
        .start();
    let pki = Certificates::new();
    let relay = TlsRelay::start(&pki, server.addr(), 0);
    let padding = "x".repeat(500);
    let input: String = (0..2000).map(|i| format!("line {i} {padding}\n")).collect();
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", "--ca", ca, &relay.addr().to_string()], &input, &[]);
    assert!(run.status.success(), "{}", run.stderr);
    let echoed: Vec<usize> = run
        .stdout
        .lines()
        .filter_map(|l| l.split("> line ").nth(1))
        .map(|rest| {
            assert!(rest.ends_with(&padding), "a line was cut: {rest:.40}…");
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(echoed, (0..2000).collect::<Vec<_>>());
}

/// Reading never waits for a blocked send: the server reads nothing until it has sent 48 MB
/// (more than the client's socket buffers, 32 MB at most here) while the client has 16 MB to
/// send (more than the server's receive buffer, kept small, and the client's send buffer take),
/// so the client's sending is stuck for most of the transfer. Everything arrives both ways, then
/// the goodbyes; a client that stopped reading while its sending was stuck would never let the
/// server finish.
#[test]
fn large_transfers_both_ways_at_once() {
    const LINES: usize = 32_000;
    const SERVER_LINES: usize = 96_000;
    let pki = Certificates::new();
    let line = format!("{}\n", "y".repeat(499));
    let sent = line.clone();
    let (addr, server) = stand_in_server_with(&pki, Some(64 * 1024), move |tls| {
        // Sealed and written by hand after the handshake: rustls' `Stream::write` also reads
        // when it can.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("handshake");
        }
        for _ in 0..SERVER_LINES {
            let mut rest = sent.as_bytes();
            while !rest.is_empty() {
                let taken = tls.conn.writer().write(rest).unwrap();
                rest = &rest[taken..];
                while tls.conn.wants_write() {
                    tls.conn.write_tls(&mut tls.sock).expect("the client reads");
                }
            }
        }
        let mut received = Vec::new();
        tls.read_to_end(&mut received).expect("the client's lines and goodbye");
        assert_eq!(received.len(), LINES * 500 + "/quit\n".len());
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", "--ca", ca, &addr.to_string()], &line.repeat(LINES), &[]);
    server.join().expect("the stand-in's checks");
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(run.stdout.len(), SERVER_LINES * 500);
}

/// A server that sends without a pause does not hold up what the user sends: the stand-in sends
/// 64 KiB lines, looking between two for the client's line, and must see it before 64 MiB went
/// out. (A client that read for as long as there was something to read would send nothing
/// while the server kept its socket full.)
#[test]
fn lines_go_out_while_the_server_sends_without_a_pause() {
    const CHUNK: usize = 64 * 1024;
    const BUDGET: usize = 64 << 20;
    let pki = Certificates::new();
    let (addr, server) = stand_in_server(&pki, |tls| {
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("handshake");
        }
        let chunk = format!("{}\n", "z".repeat(CHUNK - 1));
        let (mut sent, mut got) = (0, Vec::new());
        while !got.starts_with(b"hello\n") {
            assert!(sent < BUDGET, "the client sent nothing while {sent} bytes came its way");
            let mut rest = chunk.as_bytes();
            while !rest.is_empty() {
                rest = &rest[tls.conn.writer().write(rest).unwrap()..];
                while tls.conn.wants_write() {
                    tls.conn.write_tls(&mut tls.sock).expect("the client reads");
                }
            }
            sent += CHUNK;
            // A look at what the client sent, without waiting for it.
            tls.sock.set_nonblocking(true).unwrap();
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(_) => {
                    tls.conn.process_new_packets().expect("the client's records");
                    let _ = tls.conn.reader().read_to_end(&mut got);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the client: {e}"),
            }
            tls.sock.set_nonblocking(false).unwrap();
        }
        tls.read_to_end(&mut got).expect("the client's goodbye");
        assert_eq!(String::from_utf8_lossy(&got), "hello\n/quit\n");
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let ca = pki.ca.to_str().unwrap();
    let run = client(&["--tls", "--ca", ca, &addr.to_string()], "hello\n", &[]);
    server.join().expect("the stand-in's checks");
    assert!(run.status.success(), "{}", run.stderr);
}

/// chatd's own TLS listener, no terminator in between: lines go both ways, and the run ends
/// with status 0 on the server's close_notify after the answers.
#[test]
fn piped_lines_go_both_ways_with_chatds_own_tls() {
    let certs = Certificates::new();
    let builder = ServerBuilder::new().workers(2).chat_key("history_on_join = 0");
    let server = start_tls(builder, &certs.cert, &certs.key, &[]);
    let (mut observer, observer_nick, _) = server.join("observer");
    let ca = certs.ca.to_str().unwrap();
    let address = tls_addr(&server).to_string();
    let run = client(&["--tls", "--ca", ca, &address], "served by chatd\n/who\n", &[]);
    assert!(run.status.success(), "{} / {}", run.status, run.stderr);
    let joined = observer.read_until(LINE_TIMEOUT, |l| l.ends_with(" joined (2 online)"));
    let nick = joined.expect("the client joins").split(' ').nth(1).unwrap().to_owned();
    observer.expect_chat(&nick, "served by chatd");
    observer.expect_line(&format!("* {nick} left (quit)"));
    assert!(run.stdout.contains(&format!("<{nick}> served by chatd")), "{}", run.stdout);
    assert!(run.stdout.contains(&observer_nick), "no /who answer: {}", run.stdout);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}
