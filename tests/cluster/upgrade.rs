//! A package upgrade of one cluster host: its binary is replaced on disk and `chatd reload`
//! re-executes its supervisor (docs/cluster.md, "Reloads and upgrades"). The host must stay
//! the same member of the room — its generation, its members, its place in the stream — so
//! the other hosts see nobody leave or join, and the room goes on in one order.

use crate::common::nats::NatsCluster;
use crate::common::output_text;
use crate::serve::{WAIT, host_config, join, until};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

/// Writes a copy of `exe` beside it and renames it over `exe`, as dpkg does: same bytes,
/// another file. Returns the new file's inode.
fn replace(exe: &Path) -> u64 {
    let staged = exe.with_file_name(".chatd.dpkg-new");
    fs::copy(exe, &staged).expect("stage the new binary");
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&staged, exe).expect("rename it over the old");
    fs::metadata(exe).expect("the new binary").ino()
}

#[test]
fn a_host_upgraded_in_place_stays_the_same_member_of_the_room() {
    let nats = NatsCluster::start(3);
    let upgraded = host_config(&nats, 0).own_binary().start();
    let other = host_config(&nats, 1).start();
    let (mut a, a_nick) = join(&upgraded, "a");
    let (mut b, b_nick) = join(&other, "b");
    until(&mut a, &format!("* {b_nick} joined"));
    a.send_line("said before the upgrade");
    until(&mut b, "said before the upgrade");
    until(&mut a, "said before the upgrade");

    let pid = upgraded.pid();
    let ino = replace(upgraded.exe());
    let out = upgraded.run(&["reload"], Duration::from_secs(90));
    assert!(out.status.success(), "chatd reload: {}", output_text(&out));
    upgraded.wait_for_log("carried across the exec", WAIT);
    let running = fs::metadata(format!("/proc/{pid}/exe")).expect("the supervisor").ino();
    assert_eq!(running, ino, "the supervisor does not run the new file");

    // Both ways, after the exec; and the room still knows everyone.
    a.send_line("said after the upgrade");
    until(&mut b, "said after the upgrade");
    b.send_line("answered after the upgrade");
    until(&mut a, "answered after the upgrade");
    for (client, nick) in [(&mut a, &b_nick), (&mut b, &a_nick)] {
        client.send_line("/who");
        let who = until(client, "online:");
        assert!(who.starts_with("* 2 online:") && who.contains(nick.as_str()), "{who}");
    }
    for client in [&a, &b] {
        let transcript = client.transcript();
        for text in ["said before the upgrade", "said after the upgrade", "answered after"] {
            let seen = transcript.iter().filter(|l| l.contains(text)).count();
            assert_eq!(seen, 1, "{}: {text:?} {seen} times: {transcript:#?}", client.label());
        }
        assert!(
            !transcript.iter().any(|l| l.contains(" left") || l.contains("unreachable")),
            "{}: {transcript:#?}",
            client.label()
        );
        let joins = transcript.iter().filter(|l| l.contains(" joined (")).count();
        assert!(joins <= 1, "{}: joined again: {transcript:#?}", client.label());
    }
}
