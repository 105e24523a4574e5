//! The packaging (docs/operations.md), end to end under a real systemd: the test builds the Debian
//! package (`cargo deb`, around the binary under test), boots a throw-away systemd with the
//! repository's `tests/tools/systemd-sandbox`, installs the package there with `dpkg -i` and drives
//! the service the way an operator does: `systemctl start` (returns after READY=1), TCP clients
//! chatting from the host, `StatusText`, `systemctl reload` (good and broken config), a hung
//! worker, a crashed supervisor (Restart=on-failure), `systemctl stop`, the hardening in effect, an
//! upgrade (reinstall: the running service is reloaded, not restarted) and `dpkg --purge`. A second
//! sandbox checks that `systemd-analyze verify` is clean.
//!
//! Booting a sandbox needs root (and the Debian packages systemd and util-linux, which
//! `packaging/ci-setup.sh` installs). Run as root, the sandbox tests always run: a sandbox that
//! cannot boot fails them. Run as another user they print `SKIPPED: reason` on stderr and pass,
//! or fail with `CHATD_REQUIRE_SANDBOX=1`. `$CHATD_SYSTEMD_SANDBOX` overrides the tool. The
//! package comes from `$CHATD_DEB` if set (e.g. a release build), else from
//! `cargo deb --no-build` around the test binary if cargo-deb is installed
//! (`packaging/ci-setup.sh`), else the same files are installed with `cp` and the maintainer
//! scripts are run by hand (the output says which).
//!
//! `sandbox.rs` runs commands with deadlines and boots the sandbox (or says why it skips);
//! `package.rs` obtains the package and installs or removes it. The tests:
//! `without_systemd.rs` checks the packaged files themselves (config, unit, maintainer
//! scripts), `under_systemd.rs` drives the installed service, `teardown.rs` checks that a
//! failing test leaves nothing of its sandbox behind. Repository files are found from
//! `CARGO_MANIFEST_DIR`, whichever file asks.

// The shared harness, one directory up (`mod common;` would look in this binary's directory).
#[path = "../common/mod.rs"]
mod common;

mod crash;
mod crash_cluster;
mod package;
mod sandbox;

mod teardown;
mod under_systemd;
mod without_systemd;

use std::time::Duration;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Deadline of one command run in (or on) the sandbox.
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
