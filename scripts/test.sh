#!/usr/bin/env bash
# The whole test run: set-up, formatting, lints, API docs, every test of
# the workspace, a smoke run of the fuzz targets, and the demo's own check
# (it exits non-zero if any result is wrong).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The API documentation builds without a broken or private link.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q
cargo test --workspace --release --locked
# The queue index protocol under loom (its own target dir, so the cfg does
# not rebuild the main one).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p coproc-abi --release --locked --test loom
# A short run of every fuzz target (3 s each, from the seed corpora, which
# hold the inputs of every crash found so far).
scripts/fuzz.sh --smoke 3
cargo build --release --locked -q -p coprocd -p coproc-cli -p coproc-bench
./target/release/coproc demo -o json > /dev/null
./target/release/coproc demo --in-process -o json > /dev/null
echo "test.sh: all passed"
