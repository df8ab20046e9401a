#!/usr/bin/env bash
# CI's bounded sample of mutation testing (TESTING.md, "Mutation testing"): one shard of the
# mutants of `.cargo/mutants.toml`, shard k of N with k taken from the commit, so successive
# commits test different mutants (at random; the whole run before a release covers them all). Fails if a mutant survives: a
# mutant that makes the tests hang (cargo-mutants' "timeout", exit 3) is caught, since the suite
# would never pass with it. A new survivor is either a missing test or, once argued, an entry of
# `exclude_re` in `.cargo/mutants.toml` and of TESTING.md's table of equivalent mutants.
#
#   bash scripts/mutants-sample.sh [--shard K/N]        (default: from the commit, N = 24)
#
# The full run, before a release: `cargo mutants` (about 75 minutes on 2 cores; TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."

shards=${CSTAGATE_MUTANTS_SHARDS:-24}
commit=$(git rev-parse HEAD)
shard="$(( 16#${commit:0:8} % shards ))/$shards"
if [ "${1:-}" = "--shard" ]; then
    shard=$2
fi

if ! command -v cargo-mutants >/dev/null; then
    cargo install --locked --quiet cargo-mutants@27.1.0
fi

echo "mutation testing: shard $shard of commit ${commit:0:12}"
# --in-place: CI's clone is throwaway, and building in place reuses its target directory.
# --baseline skip: the README's test command has just run these tests unmutated.
# The timeouts are generous: a busy CI machine must not turn a slow caught mutant into a timeout.
status=0
cargo mutants --in-place --baseline skip --timeout 120 --build-timeout 900 --shard "$shard" \
    --sharding round-robin --output target/mutants-ci || status=$?
out=target/mutants-ci/mutants.out
for f in caught missed timeout unviable; do
    printf '%-9s %s\n' "$f" "$( (cat "$out/$f.txt" 2>/dev/null || true) | wc -l)"
done
# cargo-mutants exits 3 when a mutant timed out even if another survived: a survivor fails the
# run whatever the exit code says.
if [ -s "$out/missed.txt" ] && [ "$status" -eq 3 ]; then
    status=2
fi
if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
    echo "mutation testing failed (cargo-mutants exit $status): survivors above and in $out/missed.txt, logs in $out/log/" >&2
    exit "$status"
fi
