//! The package under test: `$CHATD_DEB`, a `cargo deb` build around the test binary, or — with
//! no cargo-deb — the same files copied by hand ([`Package::Files`]); installing it in a sandbox
//! and purging it again.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::*;
use crate::sandbox::{Sandbox, note, run};
use crate::{CMD_TIMEOUT, MANIFEST_DIR};

pub enum Package {
    Deb(PathBuf),
    /// No cargo-deb: the files are copied and the maintainer scripts run by hand.
    Files,
}

/// `$CHATD_DEB`, else `cargo deb` around the binary under test, else [`Package::Files`].
pub fn obtain_package(scratch: &Path) -> Package {
    if let Some(deb) = std::env::var_os("CHATD_DEB") {
        let deb = PathBuf::from(deb);
        assert!(deb.is_file(), "CHATD_DEB={} is not a file", deb.display());
        note(&format!("package: {} (CHATD_DEB)", deb.display()));
        return Package::Deb(deb);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_deb {
        note(
            "cargo-deb is not installed (packaging/ci-setup.sh installs it): installing the files with cp and running the maintainer scripts by hand",
        );
        return Package::Files;
    }
    // `cargo deb` packages target/release/chatd of its target dir: give it a scratch target
    // dir holding the binary under test, and no build.
    let target = scratch.join("target");
    fs::create_dir_all(target.join("release")).unwrap();
    fs::copy(CHATD, target.join("release/chatd")).unwrap();
    let deb = scratch.join("chatd.deb");
    let started = Instant::now();
    let out = run(
        Command::new(&cargo)
            .args(["deb", "--no-build", "--fast", "--no-strip", "-o"])
            .arg(&deb)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(MANIFEST_DIR),
        None,
        CMD_TIMEOUT,
    );
    assert!(out.status.success(), "cargo deb failed: {}", output_text(&out));
    note(&format!(
        "package: built with `cargo deb --no-build` around the test binary in {:?}",
        started.elapsed()
    ));
    Package::Deb(deb)
}

/// Repository file → installed path (the `assets` of `[package.metadata.deb]`).
const FILES: &[(&str, &str, &str)] = &[
    ("packaging/chatd.service", "/lib/systemd/system/chatd.service", "644"),
    ("packaging/chatd.toml", "/etc/chatd/chatd.toml", "644"),
    ("packaging/sysctl.d/60-chatd.conf", "/usr/lib/sysctl.d/60-chatd.conf", "644"),
    ("packaging/sysusers.d/chatd.conf", "/usr/lib/sysusers.d/chatd.conf", "644"),
];

pub fn install(sb: &Sandbox, package: &Package) -> String {
    match package {
        Package::Deb(deb) => {
            sb.cp(deb, "/tmp/chatd.deb");
            let out = sb.exec(&["dpkg", "-i", "/tmp/chatd.deb"]);
            assert!(out.status.success(), "dpkg -i: {}", output_text(&out));
            let status = sb.ok(&["dpkg-query", "-W", "-f", "${Status} ${Conffiles}", "chatd"]);
            assert!(status.starts_with("install ok installed"), "dpkg-query: {status}");
            assert!(status.contains("/etc/chatd/chatd.toml "), "config is no conffile: {status}");
            output_text(&out)
        }
        Package::Files => {
            sb.cp(Path::new(CHATD), "/usr/bin/chatd");
            for (src, dst, mode) in FILES {
                let data = fs::read(Path::new(MANIFEST_DIR).join(src)).unwrap();
                sb.write(dst, &data, mode);
            }
            for script in ["postinst", "prerm", "postrm"] {
                let data = fs::read(Path::new(MANIFEST_DIR).join("packaging/debian").join(script));
                sb.write(&format!("/tmp/{script}"), &data.unwrap(), "755");
            }
            sb.ok(&["/tmp/postinst", "configure"])
        }
    }
}

/// `dpkg --purge`, or prerm + rm + postrm by hand.
pub fn uninstall(sb: &Sandbox, package: &Package) {
    match package {
        Package::Deb(_) => {
            sb.ok(&["dpkg", "--purge", "chatd"]);
        }
        Package::Files => {
            sb.ok(&["/tmp/prerm", "remove"]);
            let mut rm = vec!["rm", "-rf", "/usr/bin/chatd", "/etc/chatd"];
            rm.extend(FILES.iter().map(|f| f.1));
            sb.ok(&rm);
            sb.ok(&["/tmp/postrm", "purge"]);
        }
    }
}
