#!/usr/bin/env bash
# Set-up, then the demo: five domains with different firmware on one mcu
# pcoproc, each a client process of a private coprocd, every result checked
# against the host reference. Extra arguments
# go to `coproc demo` (e.g. `-o json`, `--slice-us 200`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q -p coprocd -p coproc-cli -p coproc-bench
./target/release/coproc demo "$@"
