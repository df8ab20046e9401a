#!/usr/bin/env bash
# Build the fuzz targets with cargo-fuzz on the stable toolchain (no sanitizer: `-s none`) and
# run each one, one after the other, for a bounded time.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Corpora: fuzz/corpus/<target>/ (git-ignored, grows across local runs) plus the committed seeds
# fuzz/seeds/<target>/ (the capture APDUs; regenerate with fuzz/make_seeds.py) and the regression
# inputs tests/fuzz_regressions/<target>/ (read only). Crashes and hangs
# land in fuzz/artifacts/<target>/; logs in fuzz/artifacts/<target>.log. Exits non-zero if any
# target crashed, hung, ran out of memory or failed to build. See FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

SECS="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(framer apdu_phase3 apdu_phase2 acse engine link_session xml)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz --version

# The fuzz crate is outside the main workspace and has its own lock file: start it from the main
# one so the fuzzed code is built with the same dependency versions `cargo test` uses (cargo adds
# only libFuzzer's few crates to it).
cp Cargo.lock fuzz/Cargo.lock

t0=$(date +%s)
cargo fuzz build -s none
echo "fuzz: build took $(( $(date +%s) - t0 )) s"

mkdir -p fuzz/artifacts
failed=()
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t.log"
    echo "fuzz: $t for ${SECS} s"
    status=0
    # The outer timeout is a safety net only: libFuzzer stops itself after -max_total_time.
    # The regression inputs of the target (tests/fuzz_regressions/<target>/, when there are any)
    # are a read-only corpus too: the fuzzer starts from what was found and from the hand-built
    # inputs there (e.g. captures with unknown members spliced in).
    # The CSTA XML target gets the XML dictionary (tags, namespaces, entities); the others the
    # BER one.
    dict=fuzz/csta.dict
    if [ "$t" = xml ]; then
        dict=fuzz/xml.dict
    fi
    extra=()
    if [ -d "tests/fuzz_regressions/$t" ]; then
        extra=("tests/fuzz_regressions/$t")
    fi
    timeout --signal=INT --kill-after=30 "$(( SECS + 120 ))" \
        cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" "${extra[@]}" -- \
        -dict="$dict" -max_len=4096 -timeout=5 -rss_limit_mb=2048 \
        -max_total_time="$SECS" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\) .*/\1/p' <<<"$last")
    summary+=("$(printf '%-12s %12s %8s %6s %6s %12s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
        "$([ "$status" -eq 0 ] && echo ok || echo "FAILED (exit $status)")")")
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "fuzz: $t FAILED (exit $status); end of $log:"
        tail -n 60 "$log"
        ls -l "fuzz/artifacts/$t/" || true
    fi
done

echo
printf '%-12s %12s %8s %6s %6s %12s  %s\n' target executions exec/s cov ft corpus result
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/; add them under tests/fuzz_regressions/<target>/)"
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets ran ${SECS} s each, no crash"
