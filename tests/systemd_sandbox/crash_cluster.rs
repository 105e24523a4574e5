//! A crash of the supervisor in cluster mode (SPEC §8 and §11), under a real systemd: the
//! installed service is one host of a room on a NATS JetStream stream, a second host runs
//! beside it outside the sandbox, clients on both chat, and the service's main PID is killed.
//! The clients of the killed host stay connected and read `* the server restarted; …` once;
//! nobody on the other host sees them leave; every client reads the same chat lines in one
//! order, none twice; `/who` on either host lists everyone.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::nats::NatsCluster;
use crate::common::*;
use crate::crash::{Crowd, NOTICE, chatter, start_service_with};
use crate::sandbox::{Sandbox, note, sandbox_or_skip};
use crate::under_systemd::join;

/// Clients of the killed host (and those joining it just before the crash), and of the other.
const HERE: usize = 20;
const LATE: usize = 2;
const THERE: usize = 10;

/// `[cluster]` for node `node` of room `main` on `nats`; `host_timeout` well beyond a
/// restart, so nobody is declared gone.
fn cluster_lines(nats: &NatsCluster, node: &str) -> String {
    format!(
        "[cluster]\nenabled = true\nnats = [{:?}]\nroom = \"main\"\nnode = \"{node}\"\n\
         replicas = 1\nhost_timeout = \"30s\"\noutage_notice = \"10s\"\noutage_timeout = \"60s\"",
        nats.url(0)
    )
}

/// The packaged service as host h0 of room `main` on the first node of `nats`, with 2 workers,
/// one replica and a `host_timeout` well beyond a restart; `more`: further config edits.
fn start_host(
    sb: &Sandbox,
    scratch: &Path,
    nats: &NatsCluster,
    more: &[(&str, &str)],
) -> SocketAddr {
    let url = format!("nats = [{:?}]", nats.url(0));
    let mut edits = vec![
        ("enabled = false", "enabled = true"),
        ("nats = [\"nats://127.0.0.1:4222\"]", url.as_str()),
        ("node = \"\"", "node = \"h0\""),
        ("replicas = 3", "replicas = 1"),
        ("host_timeout = \"15s\"", "host_timeout = \"30s\""),
    ];
    edits.extend_from_slice(more);
    start_service_with(sb, scratch, 2, &edits)
}

/// Reads until `c` has read a chat line of each of `texts`, in whatever order they come.
fn read_all(c: &mut Client, texts: &[&str], what: &str) {
    let mut seen = HashSet::new();
    c.read_until(Duration::from_secs(30), |l| {
        if let Some(p) = parse_chat(l).filter(|p| texts.contains(&p.text.as_str())) {
            seen.insert(p.text);
        }
        seen.len() == texts.len()
    })
    .unwrap_or_else(|e| panic!("{}: {what}: {e}; {:?}", c.label(), c.transcript()));
}

#[test]
fn cluster_sessions_survive_a_killed_supervisor() {
    let Some(sb) = sandbox_or_skip("cluster_sessions_survive_a_killed_supervisor") else { return };
    let nats = NatsCluster::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let addr = start_host(&sb, scratch.path(), &nats, &[]);
    let other = ServerBuilder::new().workers(2).raw(&cluster_lines(&nats, "h1")).start();
    let mut here = Crowd::join(addr, HERE);
    let (mut there, mut there_nicks): (Vec<Client>, Vec<String>) =
        (0..THERE).map(|i| join(other.addr(), &format!("o{i}"))).unzip();
    // Everyone is in the room on both hosts before the chatter starts.
    let everyone = HERE + THERE;
    for c in here.clients.iter_mut().chain(there.iter_mut()) {
        c.send_line("/who");
        c.read_until(Duration::from_secs(30), |l| l.starts_with(&format!("* {everyone} online: ")))
            .unwrap_or_else(|e| panic!("{}: the room never had everyone: {e}", c.label()));
    }
    let writers = |clients: &[Client]| clients.iter().take(3).map(Client::writer).collect();
    let here_chatter = chatter(writers(&here.clients), "h", Duration::from_millis(50));
    let there_chatter = chatter(writers(&there), "o", Duration::from_millis(50));
    // Chatting for 3 s, past the 2 s after which the host stores a new snapshot of the room:
    // the crash comes with events both in the snapshot and after it, in the stream only.
    for c in here.clients.iter_mut().take(1).chain(there.iter_mut().take(1)) {
        read_all(c, &["h0-60", "o0-60"], "the chatter did not go on");
    }
    // Two more join now, after that snapshot: the restarted host learns of them from the
    // stream alone.
    for i in 0..LATE {
        let (client, nick) = join(addr, &format!("late{i}"));
        here.clients.push(client);
        here.nicks.push(nick);
    }
    here.crash(&sb);
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    let from = "the room goes on from event ";
    let line = journal.lines().find(|l| l.contains(from)).expect("the restored room's log line");
    let event: u64 = line[line.find(from).unwrap() + from.len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no event number in {line:?}"));
    assert!(event > 0, "the crash came before any snapshot with the room in it: {line:?}");
    here_chatter.stop();
    there_chatter.stop();
    // A last line from each host, read by everyone: the room works both ways.
    here.clients[0].send_line("after the crash, here");
    there[0].send_line("after the crash, there");
    let everyone = HERE + LATE + THERE;
    let mut nicks = here.nicks.clone();
    nicks.append(&mut there_nicks);
    let mut chats = Vec::new();
    for c in here.clients.iter_mut().chain(there.iter_mut()) {
        read_all(c, &["after the crash, here", "after the crash, there"], "no last lines");
        c.send_line("/who");
        let who = c
            .read_until(Duration::from_secs(30), |l| {
                l.starts_with(&format!("* {everyone} online: "))
            })
            .unwrap_or_else(|e| {
                panic!("{}: not everyone online: {e}: {:?}", c.label(), c.transcript())
            });
        let listed: HashSet<&str> = who[who.find(": ").unwrap() + 2..].split(", ").collect();
        for nick in &nicks {
            assert!(listed.contains(nick.as_str()), "{}: {nick} missing from {who:?}", c.label());
        }
        let t = c.transcript();
        assert!(!t.iter().any(|l| l.contains(" left")), "{}: someone left: {t:#?}", c.label());
        let mut seen = HashSet::new();
        let chat: Vec<String> = t
            .iter()
            .filter_map(|l| parse_chat(l))
            .map(|p| format!("<{}> {}", p.nick, p.text))
            .collect();
        for l in &chat {
            assert!(seen.insert(l.clone()), "{}: {l:?} twice: {t:#?}", c.label());
        }
        chats.push((c.label().to_owned(), chat));
    }
    // The same lines in the same order everywhere: those who joined late read the end of what
    // the others read (the history they were sent on joining, then live).
    let reference = chats.iter().map(|(_, chat)| chat).max_by_key(|chat| chat.len()).cloned();
    let reference = reference.unwrap_or_default();
    for (label, chat) in &chats {
        assert!(
            reference.ends_with(chat),
            "{label} read other chat lines than the others: {} of {} lines",
            chat.len(),
            reference.len()
        );
    }
    for c in &there {
        let notices = c.transcript().iter().filter(|l| *l == NOTICE).count();
        assert_eq!(notices, 0, "{}: the other host's client was told of a restart", c.label());
    }
    note(&format!("{everyone} clients on two hosts read the same {} chat lines", reference.len()));
    sb.ok(&["systemctl", "stop", "chatd"]);
    for c in &mut here.clients {
        c.read_until(Duration::from_secs(30), |l| l == "* server shutting down")
            .unwrap_or_else(|e| panic!("{}: no shutdown notice: {e}", c.label()));
    }
}

/// What a client is told when NATS goes away, and when it is back (src/supervisor/hub/cluster.rs).
const UNREACHABLE: &str = "* the room is unreachable; your lines will be sent when it is back";
const BACK: &str = "* the room is back";
const GIVE_UP: &str = "* the room is unreachable, please reconnect later";

/// Waits until `times` supervisors in a row logged that the stored room keeps the three lines
/// NATS has not stored.
fn stored_lines_logged(sb: &Sandbox, times: usize) {
    let logged = "the stored room keeps 3 events NATS has not stored yet";
    wait_until(Duration::from_secs(30), "the held lines in the stored room", || {
        let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
        (journal.matches(logged).count() >= times).then_some(())
    });
}

/// The supervisor crashes while NATS is down, and the next one too: the last one keeps the
/// sessions until it can read the stream to its end, which it does once NATS is back within
/// `outage_timeout`.
/// Nobody is disconnected, the clients hear that the server restarted and that the room is
/// back, the lines typed during the outage before the crash reach everyone once, in order,
/// and the room goes on.
#[test]
fn cluster_sessions_survive_a_crash_during_a_nats_outage() {
    let Some(sb) = sandbox_or_skip("cluster_sessions_survive_a_crash_during_a_nats_outage") else {
        return;
    };
    let mut nats = NatsCluster::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let addr = start_host(
        &sb,
        scratch.path(),
        &nats,
        &[("outage_notice = \"3s\"", "outage_notice = \"1s\"")],
    );
    let mut crowd = Crowd::join(addr, 6);
    crowd.clients[0].send_line("before the outage");
    for c in &mut crowd.clients {
        read_all(c, &["before the outage"], "the room did not work");
    }
    nats.kill(0);
    for c in &mut crowd.clients {
        c.read_until(Duration::from_secs(30), |l| l == UNREACHABLE)
            .unwrap_or_else(|e| panic!("{}: no outage notice: {e}", c.label()));
    }
    let held = ["held 1", "held 2", "held 3"];
    for text in held {
        crowd.clients[2].send_line(text);
    }
    // The stored room has them: NATS never acknowledged them. Then the supervisor is killed,
    // and the next one too before NATS is back: it stored them again from its start on.
    let mut pid = sb.prop("MainPID");
    for crash in 1..=2 {
        stored_lines_logged(&sb, crash);
        sb.ok(&["kill", "-KILL", &pid]);
        sb.wait_prop("ActiveState", "active");
        let old = pid.clone();
        pid = wait_until(Duration::from_secs(30), "a new main PID", || {
            Some(sb.prop("MainPID")).filter(|pid| *pid != old && pid != "0")
        });
    }
    stored_lines_logged(&sb, 3);
    // The new supervisor is up and cannot read the stream: NATS comes back only now.
    nats.restart(0);
    nats.wait_healthy(0);
    for c in &mut crowd.clients {
        for wanted in [NOTICE, BACK] {
            c.read_until(Duration::from_secs(30), |l| l == wanted).unwrap_or_else(|e| {
                panic!("{}: no {wanted:?}: {e}; read {:?}", c.label(), c.transcript())
            });
        }
    }
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    let n = crowd.clients.len();
    assert!(journal.contains(&format!("resumed {n} of {n} sessions")), "main PID {pid}: {journal}");
    crowd.clients[1].send_line("after the outage");
    for c in &mut crowd.clients {
        read_all(c, &["after the outage"], "the room did not go on");
        let lines: Vec<String> = c
            .transcript()
            .iter()
            .filter_map(|l| parse_chat(l))
            .map(|p| p.text)
            .filter(|t| t.starts_with("held "))
            .collect();
        assert_eq!(lines, held, "{}: the held lines once each, in order", c.label());
        c.send_line("/who");
        c.read_until(Duration::from_secs(30), |l| l.starts_with(&format!("* {n} online: ")))
            .unwrap_or_else(|e| panic!("{}: not everyone online: {e}", c.label()));
        let t = c.transcript();
        assert!(!t.iter().any(|l| l.contains(" left")), "{}: someone left: {t:#?}", c.label());
    }
    sb.ok(&["systemctl", "stop", "chatd"]);
}

/// The supervisor crashes while NATS is down, and NATS stays down past `outage_timeout`: the
/// kept sessions cannot be resumed, since the stream cannot be read to its end, and each is
/// told why before it ends, as any client is when an outage lasts too long.
#[test]
fn kept_sessions_are_told_why_they_end_when_nats_stays_down() {
    let Some(sb) = sandbox_or_skip("kept_sessions_are_told_why_they_end_when_nats_stays_down")
    else {
        return;
    };
    let mut nats = NatsCluster::start(1);
    let scratch = tempfile::tempdir().unwrap();
    let timeout = [("outage_timeout = \"60s\"", "outage_timeout = \"4s\"")];
    let addr = start_host(&sb, scratch.path(), &nats, &timeout);
    let mut crowd = Crowd::join(addr, 4);
    crowd.clients[0].send_line("before the outage");
    for c in &mut crowd.clients {
        read_all(c, &["before the outage"], "the room did not work");
    }
    // NATS goes, and the supervisor with it, long before it would give up on NATS itself.
    nats.kill(0);
    let old = sb.prop("MainPID");
    sb.ok(&["kill", "-KILL", &old]);
    for c in &mut crowd.clients {
        let (lines, end) = c.read_to_close(Duration::from_secs(30));
        assert_eq!(lines.last().map(String::as_str), Some(GIVE_UP), "{}: {lines:?}", c.label());
        assert!(matches!(end, ReadError::Eof), "{}: ended by {end}", c.label());
        assert!(!lines.iter().any(|l| l == NOTICE), "{}: told it was resumed", c.label());
    }
    assert_eq!(sb.prop("ActiveState"), "active");
    assert_ne!(sb.prop("MainPID"), old, "the service was not restarted");
    let journal = sb.ok(&["journalctl", "-u", "chatd", "--no-pager", "-o", "cat"]);
    assert!(journal.contains("the stream was not read to its end in time"), "{journal}");
}
