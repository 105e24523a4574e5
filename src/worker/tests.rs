//! A worker driven in-process through [`Worker::new`]: a socketpair stands in for the
//! supervisor's bus and a loopback listener for the slot's, and the test turns the event loop
//! itself.

use super::*;
use crate::bus::{WorkerReport, message::SessionId};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

struct Harness {
    worker: Worker,
    events: Events,
    /// The supervisor's end of the bus.
    hub: BusConn,
    addr: SocketAddr,
}

impl Harness {
    fn new() -> Harness {
        let config = Config::parse("[chat]\nhistory_on_join = 0\n", "test.toml").unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let worker = Worker::new(
            config,
            UnixStream::from_std(ours),
            vec![TcpListener::from_std(listener)],
            Signals::new(&[]).unwrap(),
        )
        .unwrap();
        let hub = BusConn::new(UnixStream::from_std(theirs), Peer::Worker { slot: 0, pid: 0 });
        Harness { worker, events: Events::with_capacity(64), hub, addr }
    }

    fn turn(&mut self) -> Option<ExitCode> {
        self.worker.turn(&mut self.events)
    }

    /// Turns the loop until the worker sends the hub something other than a heartbeat.
    fn sent_to_hub(&mut self) -> ToHub {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.hub.fill().unwrap();
            while let Some(msg) = self.hub.next_message::<ToHub>().unwrap() {
                if msg != ToHub::Control(WorkerReport::Heartbeat) {
                    return msg;
                }
            }
            assert!(Instant::now() < deadline, "the worker sent the hub nothing");
            assert_eq!(self.turn(), None, "the worker exited");
        }
    }

    fn send(&mut self, msg: &ToWorker) {
        self.hub.send(msg);
        assert!(self.hub.flush().unwrap());
    }

    /// Turns the loop until `client` has read a whole line.
    fn line_for(&mut self, client: &mut TcpStream) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n") {
            match client.read(&mut byte) {
                Ok(1) => got.push(byte[0]),
                Ok(_) => panic!("the worker closed the connection"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no line for the client");
                    assert_eq!(self.turn(), None, "the worker exited");
                }
                Err(e) => panic!("client read: {e}"),
            }
        }
        got.truncate(got.len() - 2);
        String::from_utf8(got).unwrap()
    }
}

#[test]
fn a_connection_joins_through_the_hub_talks_and_is_told_when_the_server_stops() {
    let mut h = Harness::new();
    let mut client = TcpStream::connect(h.addr).unwrap();
    client.set_nonblocking(true).unwrap();
    let ToHub::Room(RoomRequest::Join { conn, addr }) = h.sent_to_hub() else {
        panic!("expected a join")
    };
    assert_eq!(addr, client.local_addr().unwrap());

    let session = SessionId(7);
    h.send(&ToWorker::Room(RoomUpdate::Admitted { conn, session, welcome: "* welcome".into() }));
    assert_eq!(h.line_for(&mut client), "* welcome");
    client.write_all(b"hello\r\n").unwrap();
    assert_eq!(h.sent_to_hub(), ToHub::Room(RoomRequest::Say { session, text: "hello".into() }));

    h.send(&ToWorker::Control(WorkerOrder::Shutdown));
    assert_eq!(h.line_for(&mut client), "* server shutting down");
    drop(client);
    let deadline = Instant::now() + DEADLINE;
    let code = loop {
        if let Some(code) = h.turn() {
            break code;
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
    };
    assert_eq!(code, ExitCode::SUCCESS);
}
