#!/usr/bin/env bash
# Fuzzes request-path canonicalization and allowlist matching for SECONDS (default 60).
# Usage: fuzz/run.sh [SECONDS]. Exits non-zero if the target fails; the failing input is then
# in fuzz/artifacts/path_match/, and cargo-fuzz prints how to reproduce and minimize it.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
cd "$(dirname "$0")/.."
# cargo-fuzz goes into the checkout (.tools/, gitignored), not the user's ~/.cargo/bin.
TOOLS="$PWD/.tools/cargo-fuzz"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install --quiet --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# cargo-fuzz passes nightly-only rustc flags (-Z sanitizer, -C passes=sancov-module); the
# toolchain is stable, and RUSTC_BOOTSTRAP=1 lets it accept them.
export RUSTC_BOOTSTRAP=1

# The generated corpus is kept between runs (gitignored); the seeds are always in it.
mkdir -p fuzz/corpus/path_match
cp fuzz/seeds/path_match/* fuzz/corpus/path_match/

# No sanitizer: the code under test is safe Rust, where AddressSanitizer finds nothing a
# panic would not, and it runs about 3x faster without one. Debug assertions stay on.
FUZZ=(--sanitizer=none path_match)
cargo fuzz build "${FUZZ[@]}"

# libFuzzer prints a line per new input, a recommended dictionary, and, with no sanitizer,
# "WARNING: Failed to find function __sanitizer_..." (hooks that only a sanitizer provides).
# All of it goes to a log; a pass prints one summary line, a failure the log's end, which
# names the failing input and how to reproduce it.
LOG=fuzz/target/path_match.log
echo "fuzz: path_match for ${SECONDS_TO_RUN}s (libFuzzer's output: $LOG)"
if ! cargo fuzz run "${FUZZ[@]}" fuzz/corpus/path_match -- \
    -max_total_time="$SECONDS_TO_RUN" -dict=fuzz/path_match.dict -print_final_stats=1 >"$LOG" 2>&1; then
    tail -n 60 "$LOG"
    echo "fuzz: path_match FAILED; the whole output is in $LOG"
    exit 1
fi
stat() { sed -n "s/^stat::$1: *//p" "$LOG"; }
echo "fuzz: path_match passed: $(stat number_of_executed_units) runs, $(stat average_exec_per_sec)/s, $(stat new_units_added) new inputs"
