#!/usr/bin/env bash
# CI setup for the packaging tests (tests/systemd_sandbox/): installs cargo-deb, pinned, so
# the end-to-end test installs a real .deb built from Cargo.toml's [package.metadata.deb].
# Idempotent: does nothing when that version is already installed (about 60 s on 2 cores when
# it is not). The test itself needs no other package: systemd-sandbox installs what it lacks.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

if [[ $(cargo deb --version 2>/dev/null) == "cargo-deb $CARGO_DEB_VERSION" ]]; then
    echo "cargo-deb $CARGO_DEB_VERSION: already installed"
else
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
