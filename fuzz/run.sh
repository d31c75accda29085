#!/usr/bin/env bash
# Fuzzes request-path canonicalization and allowlist matching for SECONDS (default 60).
# Usage: fuzz/run.sh [SECONDS]. Exits non-zero if the target fails; the failing input is then
# in fuzz/artifacts/path_match/, and cargo-fuzz prints how to reproduce and minimize it.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# cargo-fuzz passes nightly-only rustc flags (-Z sanitizer, -C passes=sancov-module); the
# toolchain is stable, and RUSTC_BOOTSTRAP=1 lets it accept them.
export RUSTC_BOOTSTRAP=1

# The generated corpus is kept between runs (gitignored); the seeds are always in it.
mkdir -p fuzz/corpus/path_match
cp fuzz/seeds/path_match/* fuzz/corpus/path_match/

# No sanitizer: the code under test is safe Rust, where AddressSanitizer finds nothing a
# panic would not, and it runs about 3x faster without one. Debug assertions stay on.
cargo fuzz run --sanitizer=none path_match fuzz/corpus/path_match -- \
    -max_total_time="$SECONDS_TO_RUN" -dict=fuzz/path_match.dict -print_final_stats=1
