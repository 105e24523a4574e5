//! A client that joins while its host is still reading the stream back at start: it gets each
//! line once, in the room's order, history and live lines together.

use crate::common::nats::NatsCluster;
use crate::common::{ServerBuilder, parse_chat};
use crate::serve::{join, until};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

const OLD: usize = 1500;

/// Host `i`, keeping and replaying enough history for every line of the test.
fn host(nats: &NatsCluster, i: usize) -> ServerBuilder {
    let cluster = format!(
        "[cluster]\nenabled = true\nnats = [{:?}]\nroom = \"main\"\nnode = \"h{i}\"\n\
         host_timeout = \"15s\"\noutage_notice = \"10s\"\noutage_timeout = \"60s\"",
        nats.url(i)
    );
    ServerBuilder::new()
        .workers(2)
        .chat_key("history = 5000")
        .chat_key("history_on_join = 5000")
        .chat_key("rate_limit = { messages = 0 }")
        .raw(&cluster)
}

#[test]
fn a_client_joining_during_the_catch_up_at_start_sees_each_line_once_in_order() {
    let nats = NatsCluster::start(3);
    let mut first = host(&nats, 0).start();
    let (mut a, _) = join(&first, "a");
    let mut w = a.writer();
    let old: String = (0..OLD).map(|n| format!("old {n}\n")).collect();
    w.write_all(old.as_bytes()).expect("write");
    until(&mut a, &format!("old {}", OLD - 1));
    drop(a);
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_exit(Duration::from_secs(20));
    // Another host's client talks all along.
    let other = host(&nats, 1).start();
    let (mut b, _) = join(&other, "b");
    let stop = Arc::new(AtomicBool::new(false));
    let mut socket = b.writer();
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                socket.write_all(format!("live {n}\n").as_bytes()).expect("write");
                n += 1;
                // Pacing the flow, not synchronising.
                thread::sleep(Duration::from_millis(10));
            }
            socket.write_all(b"live end\n").expect("write");
        })
    };
    until(&mut b, "live 20");
    // Host 0 starts again and reads the whole stream back; c joins at once (before the host
    // has applied the first event, in tries: status then says `"last_seq":0`).
    let again = host(&nats, 0).start();
    let mut c = again.connect("c");
    until(&mut c, "* Welcome");
    until(&mut c, "live 100");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    until(&mut c, "live end");
    // Every chat line c got, history then live: the room's order from its first line on, each
    // once.
    let place = |text: &str| -> usize {
        match text.split_once(' ') {
            Some(("old", n)) => n.parse().expect("N"),
            Some(("live", "end")) => usize::MAX,
            Some(("live", n)) => OLD + n.parse::<usize>().expect("N"),
            _ => panic!("unexpected line {text:?}"),
        }
    };
    let places: Vec<usize> =
        c.transcript().iter().filter_map(|l| parse_chat(l)).map(|chat| place(&chat.text)).collect();
    assert_eq!(places.first(), Some(&0), "the whole history first");
    for pair in places.windows(2) {
        let next = if pair[1] == usize::MAX { pair[0] + 1 } else { pair[1] };
        assert_eq!(next, pair[0] + 1, "each line once, in order: {:#?}", c.transcript());
    }
}
