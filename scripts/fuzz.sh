#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each in turn, one fuzzer
# process at a time, for SECONDS each (default 60), starting from the seed
# corpus in fuzz/corpus/<target>/ (new inputs go to fuzz/work/<target>/,
# which is not committed). Prints executions per target; exits non-zero if
# any target crashed (the input is in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [--smoke] [SECONDS] [TARGET...]
#
# --smoke: a short run of every target (5 s each unless SECONDS is given),
# what scripts/test.sh does. FUZZ_SUMMARY=FILE also writes the table there.
# Targets are built without a sanitizer (safe Rust; the few unsafe views
# are bounds-checked by construction), optimised, with debug assertions
# and overflow checks on. FUZZ_SANITIZER=address builds with ASan instead.
# FUZZ_TIMEOUT=S: an input running S seconds of wall time (default 30) is
# a hang; raise it for a run that is paused now and then (SIGSTOP).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
secs=60
[ "$smoke" = 1 ] && secs=5
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    secs=$1
    shift
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz not found (scripts/setup.sh installs it: cargo install cargo-fuzz --locked)" >&2
    exit 1
fi
# libFuzzer needs nightly compiler flags: the nightly toolchain if there is
# one, else the stable compiler with RUSTC_BOOTSTRAP=1.
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
san=${FUZZ_SANITIZER:-none}

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

t0=$(date +%s)
"${fuzz[@]}" build -O -a --sanitizer "$san"
built=$(( $(date +%s) - t0 ))
echo "fuzz.sh: built ${#targets[@]} targets in ${built}s"

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
printf '%-14s %8s %12s %10s %8s %s\n' target seconds executions exec/s corpus result >"$summary"
failed=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    start=$(date +%s)
    rc=0
    # Corpus: new inputs into work/<t>; the committed seeds are read only.
    # -timeout: one input taking this long is a hang, reported as a crash.
    "${fuzz[@]}" run -O -a --sanitizer "$san" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-30}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ -z "$execs" ]; then
        execs=$(sed -n 's/^#\([0-9]*\).*DONE.*/\1/p' "$log" | tail -1)
    fi
    execs=${execs:-0}
    corpus=$(find "work/$t" "corpus/$t" -type f | wc -l)
    result=ok
    if [ "$rc" != 0 ]; then
        result="CRASH (rc $rc; see fuzz/$log and fuzz/artifacts/$t/)"
        failed=1
        grep -m5 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
    fi
    printf '%-14s %8s %12s %10s %8s %s\n' "$t" "$took" "$execs" "$(( execs / (took > 0 ? took : 1) ))" \
        "$corpus" "$result" >>"$summary"
done
cat "$summary"
if [ -n "${FUZZ_SUMMARY:-}" ]; then
    cp "$summary" "$FUZZ_SUMMARY"
fi
echo "fuzz.sh: build ${built}s, total $(( $(date +%s) - t0 ))s"
if [ "$failed" != 0 ]; then
    echo "fuzz.sh: a target crashed" >&2
    exit 1
fi
