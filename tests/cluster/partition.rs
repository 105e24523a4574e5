//! A chatd host cut off from the NATS cluster while the others go on (SPEC §11). That host and
//! its clients live in a network namespace of the test's own, joined to the NATS nodes by a veth
//! pair; the cut takes the namespace's end down (packets to NATS vanish, nothing is refused, as
//! with a pulled cable) and the heal brings it up. Needs root, as CI runs; elsewhere the test is
//! skipped saying so, unless `CI` or `CHATD_REQUIRE_SANDBOX=1` is set, which makes it fail.

use crate::common::nats::NatsCluster;
use crate::common::{Client, Server, ServerBuilder, output_text};
use crate::serve::{WAIT, join, until};
use std::process::Command;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?}: {status}");
}

/// A network namespace with a thread living in it, which runs what is given to it there: what
/// it starts (a chatd host) and the sockets it opens (clients) belong to the namespace.
struct Island {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    inner: String,
    outer: String,
    /// The address of the veth pair's outer end: where the NATS nodes take clients.
    outer_ip: String,
}

impl Island {
    /// The namespace and its veth pair, or `None` (said why) where the test cannot make one.
    fn new() -> Option<Island> {
        if !nix::unistd::geteuid().is_root() {
            let required = std::env::var_os("CI").is_some()
                || std::env::var("CHATD_REQUIRE_SANDBOX").is_ok_and(|v| v == "1");
            assert!(!required, "a network partition needs root for a network namespace");
            eprintln!("skipped: a network partition needs root for a network namespace");
            return None;
        }
        let pid = std::process::id();
        let (inner, outer) = (format!("chx{pid}i"), format!("chx{pid}o"));
        // A /30 of its own, from the process id: tests of other processes use other ones.
        let (a, b) = (pid % 250, (pid / 250) % 60 * 4);
        let outer_ip = format!("10.213.{a}.{}", b + 1);
        let inner_cidr = format!("10.213.{a}.{}/30", b + 2);
        let (jobs, incoming) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let (inner_name, outer_name) = (inner.clone(), outer.clone());
        let thread = thread::spawn(move || {
            // SAFETY: unshare(2) takes no pointers. CLONE_NEWNET moves only this thread (and the
            // processes it starts) into a new namespace; the rest of the test stays where it is.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            ip(&["link", "set", "lo", "up"]);
            let main = pid.to_string();
            ip(&["link", "add", &inner_name, "type", "veth", "peer", "name", &outer_name]);
            ip(&["link", "set", &outer_name, "netns", &main]);
            ip(&["addr", "add", &inner_cidr, "dev", &inner_name]);
            ip(&["link", "set", &inner_name, "up"]);
            let _ = ready_tx.send(());
            for job in incoming {
                job();
            }
        });
        let island = Island { jobs: Some(jobs), thread: Some(thread), inner, outer, outer_ip };
        ready.recv().expect("the namespace set up");
        ip(&["addr", "add", &format!("{}/30", island.outer_ip), "dev", &island.outer]);
        ip(&["link", "set", &island.outer, "up"]);
        Some(island)
    }

    /// Runs `f` in the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.jobs.as_ref().expect("jobs").send(job).expect("the namespace's thread");
        match rx.recv().expect("the namespace's thread") {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Cuts the namespace off: its end of the pair goes down, the outer end (and the NATS
    /// nodes' address on it) stays up for everyone else.
    fn cut(&self) {
        let inner = self.inner.clone();
        self.run(move || ip(&["link", "set", &inner, "down"]));
    }

    fn heal(&self) {
        let inner = self.inner.clone();
        self.run(move || ip(&["link", "set", &inner, "up"]));
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Deleting one end deletes both (the namespace may still hold its end until its last
        // process is gone).
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Host `i`'s config: all three NATS nodes, `[cluster]` timings as given.
fn host(nats: &NatsCluster, i: usize, outage_notice: &str) -> ServerBuilder {
    let urls: Vec<String> = (0..3).map(|k| nats.url((i + k) % 3)).collect();
    let cluster = format!(
        "[cluster]\nenabled = true\nnats = {urls:?}\nroom = \"main\"\nnode = \"h{i}\"\n\
         host_timeout = \"{HOST_TIMEOUT}s\"\noutage_notice = \"{outage_notice}\"\n\
         outage_timeout = \"90s\""
    );
    ServerBuilder::new().workers(2).raw(&cluster)
}

const HOST_TIMEOUT: u64 = 20;
const NOTICE: &str = "* the room is unreachable; your lines will be sent when it is back";
const GIVE_UP: &str = "* the room is unreachable, please reconnect later";

/// Events the cut-off host holds for the stream (`status --json`).
fn held(server: &Server) -> u64 {
    let out = server.run(&["status", "--json"], Duration::from_secs(10));
    let text = output_text(&out);
    let value: serde_json::Value = serde_json::from_str(text.trim()).expect("status JSON");
    value["cluster"]["held"].as_u64().unwrap_or_else(|| panic!("no cluster.held in {text}"))
}

/// Waits for a line ending with `text` unless one came already.
fn seen(client: &mut Client, text: &str) {
    if !client.transcript().iter().any(|l| l.ends_with(text)) {
        until(client, text);
    }
}

fn count(client: &Client, line: &str) -> usize {
    client.transcript().iter().filter(|l| l.ends_with(line)).count()
}

fn position(client: &Client, line: &str) -> usize {
    client.transcript().iter().position(|l| l.ends_with(line)).unwrap_or(usize::MAX)
}

#[test]
fn a_host_cut_off_holds_its_lines_then_rejoins_or_is_declared_gone() {
    let Some(island) = Island::new() else { return };
    let nats = NatsCluster::start_on(3, &island.outer_ip);
    // The hosts that stay connected only say the room is unreachable after a long while: the
    // test checks that they never do.
    let hosts: Vec<Server> = (0..2).map(|i| host(&nats, i, "30s").start()).collect();
    let cut_off = host(&nats, 2, "1s");
    let cut_off = island.run(move || cut_off.start());
    let (mut a, _) = join(&hosts[0], "a");
    let (mut b, _) = join(&hosts[1], "b");
    let addr = cut_off.addr();
    let (mut c, c_nick) = island.run(move || {
        let mut c = Client::connect(addr, "c");
        let nick = c.expect_welcome().0;
        (c, nick)
    });
    until(&mut a, &format!("{c_nick} joined (3 online)"));

    // (a) Cut off, and back within host_timeout: nothing lost, nothing doubled, no island room.
    island.cut();
    let cut_at = Instant::now();
    until(&mut c, NOTICE);
    let noticed = cut_at.elapsed();
    let before = held(&cut_off);
    c.send_line("held 1");
    c.send_line("held 2");
    crate::common::wait_until(WAIT, "the lines to be held", || {
        (held(&cut_off) >= before + 2).then_some(())
    });
    a.send_line("meanwhile");
    until(&mut b, "meanwhile");
    island.heal();
    let healed_at = Instant::now();
    until(&mut c, "* the room is back");
    let back = healed_at.elapsed();
    for client in [&mut a, &mut b, &mut c] {
        seen(client, "held 2");
    }
    eprintln!(
        "cut off: the notice after {noticed:?}; healed: back after {back:?}, the held lines \
         everywhere after {:?}",
        healed_at.elapsed()
    );
    // Anything doubled would come before this.
    a.send_line("marker 1");
    for client in [&mut a, &mut b, &mut c] {
        seen(client, "marker 1");
        assert_eq!(count(client, "held 1"), 1, "{:#?}", client.transcript());
        assert_eq!(count(client, "held 2"), 1, "{:#?}", client.transcript());
        assert!(position(client, "held 1") < position(client, "held 2"));
        assert_eq!(count(client, "meanwhile"), 1, "{:#?}", client.transcript());
    }
    // Held, not shown on the island: the cut-off client sees its lines only once the room has
    // them back.
    assert!(position(&c, "* the room is back") < position(&c, "held 1"), "{:#?}", c.transcript());
    for client in [&a, &b] {
        let seen = client.transcript();
        assert!(!seen.iter().any(|l| l.contains("left") || l == NOTICE), "{seen:#?}");
    }

    // (b) Cut off past host_timeout: the others see c leave once; back, the host tells c to
    // reconnect, and goes on as a new life of itself.
    island.cut();
    let cut_at = Instant::now();
    until(&mut c, NOTICE);
    let left = format!("* {c_nick} left (connection lost)");
    seen(&mut a, &left);
    seen(&mut b, &left);
    let gone = cut_at.elapsed();
    island.heal();
    let healed_at = Instant::now();
    until(&mut c, GIVE_UP);
    eprintln!(
        "cut off past host_timeout ({HOST_TIMEOUT} s): declared gone after {gone:?}; healed: \
         its client told to reconnect after {:?}",
        healed_at.elapsed()
    );
    let (lines, end) = c.read_to_close(WAIT);
    assert!(end.is_closed(), "{end}: {lines:?}");
    let (mut d, d_nick) = island.run(move || {
        let mut d = Client::connect(addr, "d");
        let nick = d.expect_welcome().0;
        (d, nick)
    });
    until(&mut a, &format!("{d_nick} joined"));
    d.send_line("marker 2");
    for client in [&mut a, &mut b, &mut d] {
        seen(client, "marker 2");
    }
    for client in [&a, &b] {
        assert_eq!(count(client, &left), 1, "{:#?}", client.transcript());
        assert!(!client.transcript().iter().any(|l| l == NOTICE), "{:#?}", client.transcript());
    }
    drop(cut_off);
}
