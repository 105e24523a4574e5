//! Tests of the TLS module against a real rustls client, in memory: the client's TLS output is
//! fed to chatd's side and back, with no sockets, so every step is deterministic.

mod certs;
mod handoff;
mod handshake;
mod idle;
mod session;

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

use super::{Handshake, HandshakeError, Progress, Session, SessionState, Status, TlsAcceptor};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tls/testdata").join(name)
}

fn acceptor() -> TlsAcceptor {
    TlsAcceptor::load(&testdata("server.pem"), &testdata("server.key")).expect("test certificate")
}

/// A client speaking only `versions`, trusting the test CA if `trusting`.
fn client_with(versions: &[&'static SupportedProtocolVersion], trusting: bool) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    if trusting {
        for cert in CertificateDer::pem_file_iter(testdata("ca.pem")).expect("ca.pem") {
            roots.add(cert.expect("CA certificate")).expect("CA accepted");
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name")).expect("client")
}

fn client() -> ClientConnection {
    client_with(&[&rustls::version::TLS13], true)
}

/// What the client wants to send.
fn client_output(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// Gives `bytes` to the client; returns the plaintext it can read now.
fn client_input(client: &mut ClientConnection, mut bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
    let mut plain = Vec::new();
    loop {
        // Read as we go: the client buffers only so much plaintext.
        match client.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("client read: {e}"),
        }
        if bytes.is_empty() {
            return Ok(plain);
        }
        client.read_tls(&mut bytes).expect("read from a slice");
        client.process_new_packets()?;
    }
}

/// A failed handshake: chatd's reason and what the client made of chatd's answer.
#[derive(Debug)]
struct Refused {
    server: HandshakeError,
    client: Option<rustls::Error>,
}

/// Runs the handshake between `client` and a new [`Handshake`]; `before_finished` runs once the
/// client has the server's Finished, before its own goes out.
fn handshake_with(
    client: &mut ClientConnection,
    mut before_finished: impl FnMut(&mut ClientConnection),
) -> Result<(Session, Vec<u8>), Box<Refused>> {
    let mut handshake =
        Handshake::new(&acceptor()).map_err(|server| Box::new(Refused { server, client: None }))?;
    for _ in 0..4 {
        if !client.is_handshaking() {
            before_finished(client);
        }
        let mut out = Vec::new();
        let progress = handshake.advance(&client_output(client), &mut out);
        let client_result = client_input(client, &out);
        match progress {
            Err(server) => return Err(Box::new(Refused { server, client: client_result.err() })),
            Ok(Progress::Done) => {
                return handshake
                    .finish()
                    .map_err(|server| Box::new(Refused { server, client: None }));
            }
            Ok(Progress::NeedInput) => {
                client_result.expect("client accepts the server's flight");
            }
        }
    }
    panic!("the handshake did not finish in 4 rounds");
}

/// A client and chatd's session, connected.
struct Pair {
    client: ClientConnection,
    server: Session,
}

fn connect() -> Pair {
    let mut client = client();
    let (server, rest) = handshake_with(&mut client, |_| {}).expect("handshake");
    assert!(rest.is_empty(), "nothing after the client's Finished");
    Pair { client, server }
}

impl Pair {
    /// The records the client sends for `text`.
    fn client_seals(&mut self, text: &[u8]) -> Vec<u8> {
        self.client.writer().write_all(text).expect("client write");
        client_output(&mut self.client)
    }

    /// chatd opens `records`; what it must send back goes to the client at once.
    fn server_opens(&mut self, records: &[u8]) -> (Vec<u8>, Status) {
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let status = self.server.open(records, &mut plain, &mut out).expect("server opens");
        let nothing = client_input(&mut self.client, &out).expect("client takes the answer");
        assert!(nothing.is_empty());
        (plain, status)
    }

    fn client_to_server(&mut self, text: &[u8]) -> Vec<u8> {
        let records = self.client_seals(text);
        self.server_opens(&records).0
    }

    fn server_to_client(&mut self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.server.seal(text, &mut out).expect("server seals");
        client_input(&mut self.client, &out).expect("client opens")
    }

    /// A line each way.
    fn chat(&mut self, tag: &str) {
        let up = format!("{tag}: client to server\n");
        assert_eq!(self.client_to_server(up.as_bytes()), up.as_bytes());
        let down = format!("{tag}: server to client\n");
        assert_eq!(self.server_to_client(down.as_bytes()), down.as_bytes());
    }

    /// The hand-off: the session as bytes, and a session made from them again.
    fn hand_off(self) -> Pair {
        let bytes = postcard::to_allocvec(&self.server.into_state()).expect("serialise");
        let state: SessionState = postcard::from_bytes(&bytes).expect("deserialise");
        Pair { client: self.client, server: Session::restore(state).expect("restore") }
    }
}

/// A session for the other end of `session` (the peer's view: directions swapped), to send what
/// a rustls client never sends.
fn mirror(session: &Session) -> Session {
    Session::new(
        session.suite,
        (session.rx.secret.clone(), session.rx.seq),
        (session.tx.secret.clone(), session.tx.seq),
    )
}
