#!/usr/bin/env bash
# CI setup for the packaging tests (tests/systemd_sandbox/). Idempotent: installs only what is
# missing, so on a machine that has it all this does nothing.
# - The Debian packages tests/tools/systemd-sandbox needs to boot a throw-away systemd
#   (systemd itself; util-linux and mount for unshare, nsenter, setpriv, pivot_root, mount).
# - cargo-deb, pinned, so the end-to-end test installs a real .deb built from Cargo.toml's
#   [package.metadata.deb] (about 60 s on 2 cores).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
DEBIAN_PACKAGES=(systemd util-linux mount)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if [[ $(dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "${DEBIAN_PACKAGES[*]}: already installed"
fi

if [[ $(cargo deb --version 2>/dev/null) == "cargo-deb $CARGO_DEB_VERSION" ]]; then
    echo "cargo-deb $CARGO_DEB_VERSION: already installed"
else
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
