//! `chatd serve` with `[cluster] enabled = true`: three chatd hosts, each on its own node of a
//! real 3-node JetStream cluster, serving one room (SPEC §11).

use crate::common::nats::NatsCluster;
use crate::common::{Client, Server, ServerBuilder, output_text, parse_chat, parse_welcome};
use std::time::{Duration, Instant};

/// Long enough for a first join, which waits for the stream to be created.
pub(crate) const WAIT: Duration = Duration::from_secs(40);

/// The config of host `i`: its own node name, the NATS node `i` only.
pub(crate) fn host_config(nats: &NatsCluster, i: usize) -> ServerBuilder {
    let cluster = format!(
        "[cluster]\nenabled = true\nnats = [{:?}]\nroom = \"main\"\nnode = \"h{i}\"\n\
         host_timeout = \"3s\"\noutage_notice = \"1s\"\noutage_timeout = \"60s\"",
        nats.url(i % 3)
    );
    ServerBuilder::new().workers(2).raw(&cluster)
}

fn start_hosts(nats: &NatsCluster) -> Vec<Server> {
    (0..3).map(|i| host_config(nats, i).start()).collect()
}

/// Connects to `server` and waits for the welcome (the join goes through the stream).
pub(crate) fn join(server: &Server, label: &str) -> (Client, String) {
    let mut client = server.connect(label);
    let line = client.read_line(WAIT).expect("welcome");
    let (nick, _) = parse_welcome(&line).unwrap_or_else(|| panic!("not a welcome: {line:?}"));
    (client, nick)
}

/// Reads until a line containing `text`; returns it.
pub(crate) fn until(client: &mut Client, text: &str) -> String {
    client.read_until(WAIT, |l| l.contains(text)).unwrap_or_else(|e| {
        panic!("{}: no line with {text:?}: {e}; read {:#?}", client.label(), client.transcript())
    })
}

/// Reads `n` chat lines, skipping the rest (joins and such).
fn chat_lines(client: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let line = client.read_until(WAIT, |l| parse_chat(l).is_some()).expect("chat line");
            let chat = parse_chat(&line).expect("chat");
            format!("<{}> {}", chat.nick, chat.text)
        })
        .collect()
}

#[test]
fn three_hosts_one_order_exactly_once_who_and_msg() {
    let nats = NatsCluster::start(3);
    let hosts = start_hosts(&nats);
    let mut clients = Vec::new();
    let mut nicks = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let (client, nick) = join(host, &format!("c{i}"));
        clients.push(client);
        nicks.push(nick);
    }
    // Guest numbers come from the room: three different ones.
    let mut unique = nicks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{nicks:?}");
    for client in clients.iter_mut().take(2) {
        until(client, &format!("{} joined (3 online)", nicks[2]));
    }
    // Everyone is listed on every host.
    for client in &mut clients {
        client.send_line("/who");
        let line = until(client, "online:");
        for nick in &nicks {
            assert!(
                line.contains(nick.as_str()),
                "{line:?} lacks {nick}: {:?}",
                client.transcript()
            );
        }
    }
    // Private messages across hosts.
    clients[0].send_line(&format!("/msg {} psst", nicks[2]));
    until(&mut clients[2], &format!("[pm from {}] psst", nicks[0]));
    until(&mut clients[0], &format!("[pm to {}] psst", nicks[2]));
    // All three talk at once: one order everywhere, each line once.
    const LINES: usize = 30;
    let mut writers: Vec<_> = clients.iter().map(|c| c.writer()).collect();
    for n in 0..LINES {
        for (i, w) in writers.iter_mut().enumerate() {
            use std::io::Write;
            w.write_all(format!("line {n} from {i}\n").as_bytes()).expect("write");
        }
    }
    let seen: Vec<Vec<String>> = clients.iter_mut().map(|c| chat_lines(c, 3 * LINES)).collect();
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let mut sorted = seen[0].clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3 * LINES);
    // Latency of a line from host 0 to host 2, after the burst.
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    for n in 0..20 {
        let start = Instant::now();
        clients[0].send_line(&format!("ping {n}"));
        until(&mut clients[2], &format!("ping {n}"));
        let took = start.elapsed();
        worst = worst.max(took);
        total += took;
        until(&mut clients[0], &format!("ping {n}"));
    }
    println!("a line across hosts: mean {:?}, worst {worst:?}", total / 20);
    // status shows the cluster.
    let out = hosts[1].run(&["status", "--json"], Duration::from_secs(10));
    let text = output_text(&out);
    assert!(text.contains("\"connected\":true"), "{text}");
    assert!(text.contains("\"node\":\"h0\""), "{text}");
}

#[test]
fn a_nick_race_across_hosts_has_one_winner() {
    let nats = NatsCluster::start(3);
    let hosts = start_hosts(&nats);
    let (mut a, a_nick) = join(&hosts[0], "a");
    let (mut b, b_nick) = join(&hosts[1], "b");
    until(&mut a, "(2 online)");
    a.send_line("/nick bob");
    b.send_line("/nick bob");
    // Each client reads until its own claim is settled: renamed, or refused.
    let outcome = |c: &mut Client, nick: &str| {
        let won = format!("* {nick} is now known as bob");
        let l = c
            .read_until(WAIT, |l| l == won || l == "! nickname 'bob' is taken")
            .expect("an answer");
        l != won
    };
    let refused = [outcome(&mut a, &a_nick), outcome(&mut b, &b_nick)];
    assert_eq!(refused.iter().filter(|r| **r).count(), 1, "{refused:?}");
    let (mut c, _) = join(&hosts[2], "c");
    c.send_line("/who");
    let who = until(&mut c, "online:");
    assert_eq!(who.matches("bob").count(), 1, "{who}");
}

#[test]
fn history_survives_restarting_every_host_and_a_killed_host_leaves_once() {
    let nats = NatsCluster::start(3);
    let mut hosts = start_hosts(&nats);
    let (mut a, _) = join(&hosts[0], "a");
    a.send_line("remember me");
    until(&mut a, "remember me");
    drop(a);
    for host in &mut hosts {
        host.signal(nix::sys::signal::Signal::SIGTERM);
        host.wait_exit(Duration::from_secs(20));
    }
    let hosts = start_hosts(&nats);
    let (mut b, _) = join(&hosts[1], "b");
    until(&mut b, "remember me");
    let (c, c_nick) = join(&hosts[2], "c");
    until(&mut b, &format!("{c_nick} joined"));
    let (mut d, _) = join(&hosts[0], "d");
    until(&mut b, "(3 online)");
    // host 2 dies without a word: after host_timeout the others see c leave, once.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(hosts[2].pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let gone = format!("* {c_nick} left (connection lost)");
    until(&mut b, &gone);
    until(&mut d, &gone);
    b.send_line("after");
    until(&mut b, "after");
    until(&mut d, "after");
    assert_eq!(b.transcript().iter().filter(|l| **l == gone).count(), 1);
    assert_eq!(d.transcript().iter().filter(|l| **l == gone).count(), 1);
    drop(c);
}

#[test]
fn lines_typed_while_nats_is_down_are_held_and_sent_once() {
    let mut nats = NatsCluster::start(3);
    let hosts = start_hosts(&nats);
    let (mut a, _) = join(&hosts[0], "a");
    let (mut b, _) = join(&hosts[1], "b");
    until(&mut a, "(2 online)");
    for i in 0..3 {
        nats.kill(i);
    }
    until(&mut a, "* the room is unreachable; your lines will be sent when it is back");
    until(&mut b, "* the room is unreachable; your lines will be sent when it is back");
    a.send_line("held 1");
    a.send_line("held 2");
    nats.restart_all();
    until(&mut a, "* the room is back");
    until(&mut b, "* the room is back");
    let lines = chat_lines(&mut b, 2);
    assert!(lines[0].ends_with("held 1") && lines[1].ends_with("held 2"), "{lines:?}");
    b.send_line("marker");
    until(&mut a, "marker");
    let held = a.transcript().iter().filter(|l| l.ends_with("held 1")).count();
    assert_eq!(held, 1, "{:#?}", a.transcript());
}

#[test]
fn a_reload_in_cluster_mode_keeps_the_sessions() {
    let nats = NatsCluster::start(3);
    let hosts = start_hosts(&nats);
    let (mut a, _) = join(&hosts[0], "a");
    let (mut b, _) = join(&hosts[1], "b");
    until(&mut a, "(2 online)");
    let out = hosts[0].run(&["reload"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", output_text(&out));
    a.send_line("still here");
    until(&mut b, "still here");
    b.send_line("and you");
    until(&mut a, "and you");
}

#[test]
fn a_host_that_read_a_trimmed_stream_lists_the_members_it_learnt_from_a_roster() {
    let nats = NatsCluster::start(3);
    // The stream exists already, keeping 10 events: hosts use it as it is. No checkpoint can be
    // stored, so the late host reads what is left of the stream (tests/cluster/checkpoint.rs
    // has the host that starts from a checkpoint).
    crate::checkpoint::create_small_stream(&nats, 10);
    crate::checkpoint::refuse_checkpoints(&nats);
    let first = host_config(&nats, 0).start();
    let (mut a, _) = join(&first, "a");
    a.send_line("/nick alice");
    until(&mut a, "is now known as alice");
    // Enough lines that alice's join and rename are no longer in the stream.
    for n in 0..12 {
        a.send_line(&format!("filler {n}"));
        until(&mut a, &format!("filler {n}"));
    }
    let late = host_config(&nats, 1).start();
    // Host 0 publishes its roster when host 1 appears; host 1's room learns alice from it.
    // (A join on host 1 before that would be numbered without alice's guest number.)
    crate::common::wait_until(WAIT, "host 1 to learn alice", || {
        let out = late.run(&["status", "--json"], Duration::from_secs(10));
        output_text(&out).contains("\"online\":1").then_some(())
    });
    assert!(!late.log_contains("starting from the checkpoint"), "a checkpoint was stored");
    let (mut b, b_nick) = join(&late, "b");
    until(&mut a, &format!("{b_nick} joined"));
    b.send_line("/who");
    let who = until(&mut b, "online:");
    assert!(who.contains("alice") && who.contains(&b_nick), "{who}");
    b.send_line("/msg alice hi");
    until(&mut a, &format!("[pm from {b_nick}] hi"));
}

#[test]
fn a_cluster_host_shows_the_room_in_its_metrics() {
    let mut nats = NatsCluster::start(3);
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"";
    let hosts: Vec<Server> = (0..2).map(|i| host_config(&nats, i).raw(metrics).start()).collect();
    let (mut a, _) = join(&hosts[0], "a");
    let (_b, _) = join(&hosts[1], "b");
    until(&mut a, "(2 online)");
    let line = hosts[0].wait_for_log("serving metrics on http://", WAIT);
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    // The supervisor hands the endpoint new numbers once a second.
    let scrape_until = |what: &str, ready: &dyn Fn(&str) -> bool| -> String {
        crate::common::wait_until(WAIT, what, || {
            crate::common::nats::http_get(port, "/metrics").filter(|text| ready(text))
        })
    };
    let text = scrape_until("both members", &|t| gauge(t, "chatd_cluster_members") == Some(2.0));
    assert_eq!(gauge(&text, "chatd_cluster_connected"), Some(1.0), "{text}");
    assert_eq!(gauge(&text, "chatd_cluster_hosts"), Some(2.0), "{text}");
    assert_eq!(gauge(&text, "chatd_cluster_held_events"), Some(0.0), "{text}");
    assert!(gauge(&text, "chatd_cluster_last_seq").is_some_and(|seq| seq >= 4.0), "{text}");
    // NATS gone: the host says so, and counts the seconds.
    for i in 0..3 {
        nats.kill(i);
    }
    until(&mut a, "* the room is unreachable");
    scrape_until("the outage", &|t| {
        gauge(t, "chatd_cluster_connected") == Some(0.0)
            && gauge(t, "chatd_cluster_unreachable_seconds").is_some_and(|s| s >= 1.0)
    });
    a.send_line("held");
    scrape_until("the held line", &|t| {
        gauge(t, "chatd_cluster_held_events").is_some_and(|held| held >= 1.0)
    });
}
