//! `BusConn` over a real socketpair, in one thread: frames both ways, frames cut anywhere by
//! the socket, the size limit on write, the bad-frame policy on read, and descriptor passing.

use super::*;
use crate::bus::frame::{MAX_FRAME_LEN, VERSION};
use crate::bus::message::{
    LeaveReason, RoomRequest, RoomUpdate, SessionId, ToHub, ToWorker, WorkerOrder, WorkerReport,
};
use std::io::{Read, Write};
use std::os::fd::AsFd;

/// Enough rounds of flush/fill for any frame in these tests; a bound instead of a timeout.
const ROUNDS: usize = 100_000;

fn pair() -> (BusConn, BusConn) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (BusConn::new(a, Peer::Supervisor), BusConn::new(b, Peer::Worker { slot: 0, pid: 1 }))
}

/// Moves bytes from `from` to `to` until `to` has a whole message.
fn pump<T: DeserializeOwned>(from: &mut BusConn, to: &mut BusConn) -> T {
    for _ in 0..ROUNDS {
        from.flush().expect("flush");
        to.fill().expect("fill");
        if let Some(msg) = to.next_message().expect("a good frame") {
            return msg;
        }
    }
    panic!("no message after {ROUNDS} rounds");
}

fn say(text: &str) -> ToHub {
    ToHub::Room(RoomRequest::Say { session: SessionId(7), text: text.into() })
}

fn direct(lines: Vec<String>) -> ToWorker {
    ToWorker::Room(RoomUpdate::Direct { session: SessionId(7), lines })
}

#[test]
fn frames_travel_both_ways_in_order() {
    let (mut hub, mut worker) = pair();
    worker.send(&ToHub::Control(WorkerReport::Heartbeat { counters: Default::default() }));
    worker.send(&say("héllo"));
    hub.send(&ToWorker::Control(WorkerOrder::Shutdown));
    assert!(worker.flush().expect("flush"), "a few bytes go out at once");
    assert!(hub.flush().expect("flush"));
    assert_eq!(worker.pending_out(), 0);

    assert_eq!(hub.fill().expect("fill"), Fill::Drained);
    assert_eq!(
        hub.next_message::<ToHub>().unwrap(),
        Some(ToHub::Control(WorkerReport::Heartbeat { counters: Default::default() }))
    );
    assert_eq!(hub.next_message::<ToHub>().unwrap(), Some(say("héllo")));
    assert_eq!(hub.next_message::<ToHub>().unwrap(), None);
    assert_eq!(worker.fill().expect("fill"), Fill::Drained);
    let order = worker.next_message::<ToWorker>().unwrap();
    assert_eq!(order, Some(ToWorker::Control(WorkerOrder::Shutdown)));

    drop(hub);
    assert_eq!(worker.fill().expect("fill"), Fill::Closed);
}

#[test]
fn a_frame_larger_than_the_socket_buffer_arrives_whole() {
    let (mut hub, mut worker) = pair();
    let lines: Vec<String> = (0..4096).map(|i| format!("{i:>1000}")).collect();
    hub.send(&direct(lines.clone()));
    hub.send(&direct(vec!["after".into()]));
    assert!(!hub.flush().expect("flush"), "4 MB do not fit a socket buffer at once");
    assert!(hub.pending_out() > 0);
    assert!(pump::<ToWorker>(&mut hub, &mut worker) == direct(lines), "the frame arrives whole");
    assert_eq!(pump::<ToWorker>(&mut hub, &mut worker), direct(vec!["after".into()]));
    assert_eq!(hub.pending_out(), 0);
}

#[test]
fn a_frame_cut_anywhere_waits_for_the_rest() {
    let (raw, theirs) = UnixStream::pair().expect("socketpair");
    let mut conn = BusConn::new(theirs, Peer::Supervisor);
    let msg = ToWorker::Room(RoomUpdate::Left { session: SessionId(3) });
    let mut frame = frame::encode(&msg).expect("encode");
    frame.extend(frame::encode(&msg).expect("encode"));
    let mut got = Vec::new();
    for byte in &frame {
        (&raw).write_all(std::slice::from_ref(byte)).expect("write");
        assert_eq!(conn.fill().expect("fill"), Fill::Drained);
        while let Some(m) = conn.next_message::<ToWorker>().expect("good so far") {
            got.push(m);
        }
    }
    assert_eq!(got, vec![msg.clone(), msg]);
}

#[test]
fn the_fill_budget_yields_to_the_event_loop() {
    let (mut hub, theirs) = pair();
    let mut worker = BusConn::with_fill_budget(theirs.stream, Peer::Supervisor, 1024);
    let big = direct(vec!["x".repeat(200_000)]);
    hub.send(&big);
    hub.flush().expect("flush");
    // One read (at most the read buffer) passes the budget: the rest waits for the next turn.
    assert_eq!(worker.fill().expect("fill"), Fill::More);
    assert_eq!(worker.next_message::<ToWorker>().unwrap(), None);
    assert!(pump::<ToWorker>(&mut hub, &mut worker) == big, "the frame arrives whole");
}

#[test]
fn an_oversized_frame_is_refused_on_write_and_the_rest_goes_on() {
    let (mut hub, mut worker) = pair();
    hub.send(&direct(vec!["x".repeat(MAX_FRAME_LEN)]));
    assert_eq!(hub.pending_out(), 0, "nothing of it is queued");
    hub.send(&direct(vec!["small".into()]));
    assert_eq!(pump::<ToWorker>(&mut hub, &mut worker), direct(vec!["small".into()]));
}

/// Each kind of unreadable frame gets the same treatment: the reader reports it once, reads
/// nothing more, and the peer sees its connection closed.
#[test]
fn a_bad_frame_closes_that_connection() {
    let good = frame::encode(&say("ok")).expect("encode");
    let mut other_version = frame::encode(&say("ok")).expect("encode");
    other_version[4] = VERSION + 1;
    let oversized = [(MAX_FRAME_LEN as u32 + 1).to_le_bytes().as_slice(), &[VERSION]].concat();
    let bad_body = vec![2, 0, 0, 0, VERSION, 250];
    for (bad, reason) in [
        (other_version, "frame version"),
        (oversized, "bad frame length"),
        (vec![0, 0, 0, 0], "bad frame length 0"),
        (bad_body, "malformed frame body"),
    ] {
        let (raw, theirs) = UnixStream::pair().expect("socketpair");
        let mut conn = BusConn::new(theirs, Peer::Worker { slot: 2, pid: 42 });
        (&raw).write_all(&[good.as_slice(), &bad, &good].concat()).expect("write");
        conn.fill().expect("fill");
        assert_eq!(conn.next_message::<ToHub>().expect("the first frame is good"), Some(say("ok")));
        let error = conn.next_message::<ToHub>().expect_err("a bad frame");
        assert!(error.reason().contains(reason), "{error} for {reason}");
        assert!(error.to_string().starts_with("slot 2: worker pid 42 sent a bad frame"), "{error}");
        // Nothing after it is believed, and the peer is closed.
        assert_eq!(conn.next_message::<ToHub>().expect("no more"), None);
        assert_eq!(conn.fill().expect("fill"), Fill::Closed);
        let mut rest = Vec::new();
        assert_eq!((&raw).read_to_end(&mut rest).expect("EOF"), 0, "the peer sees EOF");
    }
}

#[test]
fn descriptors_travel_with_their_frames_and_work_on_the_other_side() {
    let (mut old, mut new) = pair();
    // Two live sockets to hand over, as a worker hands over its clients.
    let (first, mut first_peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let (second, mut second_peer) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let big = direct(vec!["y".repeat(1 << 20)]);
    old.send_with_fds(&big, vec![OwnedFd::from(first)]);
    old.send(&say("between"));
    old.send_with_fds(&ToWorker::Control(WorkerOrder::Receive), vec![OwnedFd::from(second)]);

    // A frame's descriptors are there by the time the frame is.
    assert!(pump::<ToWorker>(&mut old, &mut new) == big, "the frame arrives whole");
    let fd = new.take_fd().expect("the first frame's descriptor");
    assert_eq!(pump::<ToHub>(&mut old, &mut new), say("between"));
    assert_eq!(pump::<ToWorker>(&mut old, &mut new), ToWorker::Control(WorkerOrder::Receive));
    let fd2 = new.take_fd().expect("the third frame's descriptor");
    assert!(new.take_fd().is_none());

    // Received close-on-exec, like every descriptor chatd holds.
    let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
    assert!(nix::fcntl::FdFlag::from_bits_retain(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC));

    // The sender's copies are closed once sent: only the received ones keep the sockets open,
    // so dropping them is the peer's EOF.
    for (fd, peer) in [(fd, &mut first_peer), (fd2, &mut second_peer)] {
        peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        let mut stream = std::os::unix::net::UnixStream::from(fd);
        stream.write_all(b"hello").expect("write through the passed socket");
        drop(stream);
        let mut got = String::new();
        peer.read_to_string(&mut got).expect("read until EOF");
        assert_eq!(got, "hello");
    }
}

#[test]
fn the_leave_reason_survives_the_trip() {
    let (mut hub, mut worker) = pair();
    let leave = |reason| ToHub::Room(RoomRequest::Leave { session: SessionId(1), reason });
    for reason in [LeaveReason::Quit(Some("bye".into())), LeaveReason::TooSlow] {
        worker.send(&leave(reason.clone()));
        assert_eq!(pump::<ToHub>(&mut worker, &mut hub), leave(reason));
    }
}

#[test]
fn a_parked_connection_resumes_mid_frame_both_ways() {
    let (mut sup, mut worker) = pair();
    // Half a frame has arrived at the supervisor, and it has a frame of its own not yet written.
    let frame = frame::encode(&say("across the exec")).expect("encode");
    let (first, rest) = frame.split_at(frame.len() / 2);
    worker.stream().write_all(first).expect("write half");
    assert_eq!(sup.fill().expect("fill"), Fill::Drained);
    assert!(sup.next_message::<ToHub>().expect("good so far").is_none());
    sup.send(&direct(vec!["queued".into()]));
    let parked = sup.park().expect("no descriptors in flight");
    assert_eq!(parked.unread, first);

    let stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(
        sup.stream().as_fd().try_clone_to_owned().unwrap(),
    ));
    drop(sup);
    let mut sup = BusConn::resume(stream, Peer::Supervisor, parked);
    worker.stream().write_all(rest).expect("write the rest");
    for _ in 0..ROUNDS {
        sup.fill().expect("fill");
        if let Some(msg) = sup.next_message::<ToHub>().expect("a good frame") {
            assert_eq!(msg, say("across the exec"));
            let got: ToWorker = pump(&mut sup, &mut worker);
            assert_eq!(got, direct(vec!["queued".into()]));
            return;
        }
    }
    panic!("the frame cut by the exec never completed");
}

#[test]
fn descriptors_in_flight_cannot_be_parked() {
    let (mut sup, _worker) = pair();
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    sup.send_with_fds(&ToWorker::Control(WorkerOrder::Receive), vec![a.into()]);
    assert_eq!(sup.park(), Err(DescriptorsInFlight));
}
