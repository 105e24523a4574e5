//! `BusConn` over a real socketpair, in one thread: the bad-frame policy on read.

use super::*;
use crate::bus::frame::{MAX_FRAME_LEN, VERSION};
use crate::bus::message::{RoomRequest, SessionId, ToHub};
use std::io::{Read, Write};

fn say(text: &str) -> ToHub {
    ToHub::Room(RoomRequest::Say { session: SessionId(7), text: text.into() })
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
