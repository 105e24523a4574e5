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
            vec![(TcpListener::from_std(listener), crate::listener::Kind::Plain)],
            None,
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
                if !matches!(msg, ToHub::Control(WorkerReport::Heartbeat { .. })) {
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

/// Turns the worker's loop until `channel` yields a message.
fn transfer_from(h: &mut Harness, channel: &mut BusConn) -> Transfer {
    let deadline = Instant::now() + DEADLINE;
    loop {
        channel.fill().unwrap();
        if let Some(msg) = channel.next_message::<Transfer>().unwrap() {
            return msg;
        }
        assert!(Instant::now() < deadline, "nothing came on the channel");
        assert_eq!(h.turn(), None, "the worker exited");
    }
}

#[test]
fn a_hand_off_over_several_channels_deals_the_sessions_out_evenly() {
    const CLIENTS: u64 = 9;
    let mut h = Harness::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = TcpStream::connect(h.addr).unwrap();
        client.set_nonblocking(true).unwrap();
        let ToHub::Room(RoomRequest::Join { conn, .. }) = h.sent_to_hub() else {
            panic!("expected a join")
        };
        let welcome = "* welcome".to_string();
        h.send(&ToWorker::Room(RoomUpdate::Admitted { conn, session: SessionId(i), welcome }));
        assert_eq!(h.line_for(&mut client), "* welcome");
        clients.push(client);
    }
    let (ours, theirs): (Vec<_>, Vec<_>) =
        (0..3).map(|_| std::os::unix::net::UnixStream::pair().unwrap()).unzip();
    h.hub.send_with_fds(
        &ToWorker::Control(WorkerOrder::HandOff),
        ours.into_iter().map(std::os::fd::OwnedFd::from).collect(),
    );
    assert!(h.hub.flush().unwrap());
    let done = ToHub::Control(WorkerReport::HandoffDone { sessions: CLIENTS as usize });
    assert_eq!(h.sent_to_hub(), done);

    let mut channels: Vec<BusConn> = theirs
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            BusConn::new(UnixStream::from_std(s), Peer::Predecessor)
        })
        .collect();
    let mut went = Vec::new();
    for (index, channel) in channels.iter_mut().enumerate() {
        for _ in 0..CLIENTS / 3 {
            let Transfer::Session(state) = transfer_from(&mut h, channel) else {
                panic!("expected a session")
            };
            assert!(channel.take_fd().is_some(), "a session comes with its socket");
            went.push((state.session, index));
        }
    }
    went.sort_unstable();
    let sessions: Vec<SessionId> = went.iter().map(|(s, _)| *s).collect();
    assert_eq!(sessions, (0..CLIENTS).map(SessionId).collect::<Vec<_>>(), "each session once");

    // The hub still writes to the old worker for a moved session: it follows the session.
    for &(session, index) in &went[..3] {
        let lines = vec![format!("for {session}")];
        h.send(&ToWorker::Room(RoomUpdate::Direct { session, lines: lines.clone() }));
        // Transfers hold TLS secrets, so they do not compare; their Debug forms do.
        assert_eq!(
            format!("{:?}", transfer_from(&mut h, &mut channels[index])),
            format!("{:?}", Transfer::Direct { session, lines })
        );
    }
}

/// However many sessions there are, one turn of the event loop hands over a bounded slice of
/// them (256 at most): the rest of the loop (heartbeats, the bus) runs between slices.
#[test]
fn a_hand_off_takes_a_slice_per_turn() {
    const CLIENTS: usize = 600;
    let mut h = Harness::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(TcpStream::connect(h.addr).unwrap());
        let ToHub::Room(RoomRequest::Join { conn, .. }) = h.sent_to_hub() else {
            panic!("expected a join")
        };
        let welcome = "* welcome".to_string();
        let session = SessionId(i as u64);
        h.hub.send(&ToWorker::Room(RoomUpdate::Admitted { conn, session, welcome }));
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = std::os::fd::OwnedFd::from(ours);
    h.hub.send_with_fds(&ToWorker::Control(WorkerOrder::HandOff), vec![fd]);
    assert!(h.hub.flush().unwrap());
    theirs.set_nonblocking(true).unwrap();
    let mut channel = BusConn::new(UnixStream::from_std(theirs), Peer::Predecessor);
    // Clients still here after each turn: each one handed over leaves the worker.
    let mut left = vec![h.worker.clients.len()];
    let (mut received, deadline) = (0, Instant::now() + DEADLINE);
    while received < CLIENTS {
        assert!(Instant::now() < deadline, "sessions received: {received}; clients: {left:?}");
        assert_eq!(h.turn(), None, "the worker exited");
        left.push(h.worker.clients.len());
        channel.fill().unwrap();
        while let Some(msg) = channel.next_message::<Transfer>().unwrap() {
            assert!(matches!(msg, Transfer::Session(_)), "{msg:?}");
            received += 1;
        }
    }
    let per_turn: Vec<usize> = left.windows(2).map(|w| w[0] - w[1]).collect();
    assert!(per_turn.iter().all(|&n| n <= 256), "sessions handed over per turn: {per_turn:?}");
    drop(clients);
}
