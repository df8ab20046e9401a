#!/usr/bin/env bash
# The tests must hold on a busy machine (README, "The two commands"). This runs the README's test
# command N times while busy loops occupy the CPUs (one per CPU by default, at least two),
# and prints one summary line per run. The test binaries are built first, before the load, so
# the runs time the tests and not the build. The busy loops are stopped on any exit.
#
#   bash scripts/test-under-load.sh [--runs N] [--busy N] [--pin]
#
# --pin pins busy loop i to CPU i (taskset), so every core is taken rather than left to the
# scheduler. Logs: target/test-under-load/run-<i>.log. Exit status: 0 if every run passed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=3
cpus=$(nproc 2>/dev/null || echo 2)
busy=$(( cpus < 2 ? 2 : cpus ))
pin=false
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --busy) busy=$2; shift 2 ;;
        --pin) pin=true; shift ;;
        *) echo "usage: $0 [--runs N] [--busy N] [--pin]" >&2; exit 2 ;;
    esac
done

logs=target/test-under-load
mkdir -p "$logs"

echo "building the test binaries (no load yet)..."
if ! cargo test --locked --no-run >"$logs/build.log" 2>&1; then
    echo "build failed: see $logs/build.log" >&2
    exit 1
fi

busy_pids=()
stop_busy() {
    for p in "${busy_pids[@]}"; do
        kill "$p" 2>/dev/null
    done
    for p in "${busy_pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    busy_pids=()
}
trap stop_busy EXIT
trap 'stop_busy; exit 130' INT TERM

for i in $(seq 0 $((busy - 1))); do
    if $pin && command -v taskset >/dev/null; then
        taskset -c $((i % cpus)) bash -c 'while :; do :; done' &
    else
        bash -c 'while :; do :; done' &
    fi
    busy_pids+=("$!")
done
echo "$busy busy loops on $cpus CPUs (pids ${busy_pids[*]}$($pin && echo ', pinned'))"

failed_runs=0
for run in $(seq 1 "$runs"); do
    log="$logs/run-$run.log"
    start=$(date +%s)
    # The README's test command, exactly.
    cargo test --locked --no-fail-fast >"$log" 2>&1
    status=$?
    secs=$(( $(date +%s) - start ))
    read -r passed failed ignored < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) g += $i } } END { print p+0, f+0, g+0 }' "$log")
    binaries=$(grep -c '^ *Running \|^ *Doc-tests ' "$log")
    if [ "$status" -eq 0 ]; then verdict=ok; else verdict="FAILED (exit $status)"; failed_runs=$((failed_runs + 1)); fi
    echo "run $run/$runs: $verdict in ${secs}s: $binaries test binaries and doc-test sets, $passed passed, $failed failed, $ignored ignored; log $log"
    if [ "$status" -ne 0 ]; then
        grep -E '^(test .* FAILED|error: test failed|error: [0-9]+ targets? failed)' "$log" | sed 's/^/    /' | head -20
    fi
done
stop_busy
echo "under load: $((runs - failed_runs)) of $runs runs passed"
[ "$failed_runs" -eq 0 ]
