#!/usr/bin/env bash
# Runs every fuzz target for SECONDS in all (default 90), shared evenly, starting from the seed
# corpus in corpus/<target>/. New inputs go to a scratch directory, so the repository's corpus
# only changes when someone copies a useful input in. A crash stops the run with its input in
# artifacts/<target>/; turn it into a fix and a regression test.
#
#   fuzz/run.sh 90          # what CI runs
#   fuzz/run.sh 600         # a longer local run
set -euo pipefail

total="${1:-90}"
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=$(cargo +nightly fuzz list)
count=$(echo "$targets" | wc -l)
each=$(( total / count ))
(( each >= 1 )) || each=1

# build first, so the time limit is spent fuzzing
cargo +nightly fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "$scratch/$target" "corpus/$target"
    echo "== $target: ${each}s"
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$each" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
