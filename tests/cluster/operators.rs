//! Operators' commands across cluster hosts (docs/cluster.md, "Operators"): `chatd kick` on one
//! host of a member served by another, and a `chatd ban` given on one host holding on every
//! host, lifted from any of them.

use crate::common::nats::NatsCluster;
use crate::common::{Client, output_text};
use crate::serve::{WAIT, host_config, join, until};
use std::net::IpAddr;
use std::time::Duration;

const CMD: Duration = Duration::from_secs(30);

#[test]
fn a_kick_and_a_ban_given_on_one_host_act_on_the_others() {
    let nats = NatsCluster::start(3);
    let hosts = [host_config(&nats, 0).start(), host_config(&nats, 1).start()];
    let (mut a, _) = join(&hosts[0], "a");
    let (mut b, b_nick) = join(&hosts[1], "b");
    until(&mut a, &format!("* {b_nick} joined"));

    // Kicked from host 0, served by host 1: b is told, everyone sees it leave once.
    let out = hosts[0].run(&["kick", &b_nick, "flooding"], CMD);
    assert!(out.status.success(), "chatd kick: {}", output_text(&out));
    until(&mut b, "* you were kicked: flooding");
    b.expect_closed();
    let left = format!("* {b_nick} left (kicked: flooding)");
    until(&mut a, &left);

    // Banned on host 0: a client of host 1 from that address is kicked there, and a new one
    // refused there.
    let banned: IpAddr = "127.0.0.3".parse().unwrap();
    let mut c = Client::connect_from(hosts[1].addr(), banned, "c");
    let welcome = c.read_line(WAIT).expect("welcome");
    let c_nick = crate::common::parse_welcome(&welcome).expect("a welcome").0;
    until(&mut a, &format!("* {c_nick} joined"));
    let out = hosts[0].run(&["ban", "127.0.0.3", "spam"], CMD);
    assert!(out.status.success(), "chatd ban: {}", output_text(&out));
    assert!(output_text(&out).contains(&c_nick), "{}", output_text(&out));
    until(&mut c, "* you were kicked: spam");
    c.expect_closed();
    until(&mut a, &format!("* {c_nick} left (kicked: spam)"));
    let listed = hosts[1].run(&["bans"], CMD);
    assert!(output_text(&listed).contains("127.0.0.3"), "{}", output_text(&listed));
    let mut refused = Client::connect_from(hosts[1].addr(), banned, "refused");
    until(&mut refused, "! you are banned");

    // Lifted on host 1: host 0 lets the address in again.
    let out = hosts[1].run(&["unban", "127.0.0.3"], CMD);
    assert!(out.status.success(), "chatd unban: {}", output_text(&out));
    a.send_line("a marker after the unban");
    until(&mut a, "a marker after the unban");
    let mut back = Client::connect_from(hosts[0].addr(), banned, "back");
    let line = back.read_line(WAIT).expect("a line");
    assert!(line.starts_with("* Welcome"), "{line}");

    let seen = a.transcript().iter().filter(|l| **l == left).count();
    assert_eq!(seen, 1, "{left:?} seen {seen} times: {:#?}", a.transcript());
}
