#!/usr/bin/env bash
# Build the Debian package (cargo-deb): binaries, systemd units, the
# default configuration, man pages, shell completions, docs, the firmware
# SDK and the example firmware. Prints the path of the .deb.
#   scripts/package.sh            # target/debian/coproc_VERSION_ARCH.deb
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked -q -p coprocd -p coproc-cli -p coproc-bench
out=target/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions" "$out/firmware"
target/release/coproc man "$out/man"
target/release/coprocd --man "$out/man"
target/release/coproc completions bash > "$out/completions/coproc"
target/release/coproc completions zsh > "$out/completions/_coproc"
target/release/coproc completions fish > "$out/completions/coproc.fish"
target/release/coprocd --print-default-config > "$out/coprocd.toml"
target/release/coproc-bench export-firmware "$out/firmware"
cargo deb -p coprocd --no-build --locked --no-strip -q -o target/debian/
