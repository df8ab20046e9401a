#!/usr/bin/env bash
# Side-by-side benchmark: the C decoder that asn1c generates from asn1/ (adapted copies of the
# two CSTA modules in benches/asn1c/asn1/, see README.md), on the APDUs of captures/*.frames.tsv.
#
#   bash benches/asn1c/run.sh [RUNS [SECONDS_PER_RUN]]     (defaults: 7 runs of >= 1 s per set)
#
# Generated code and binaries go to $ASN1C_BENCH_DIR (default benches/asn1c/build/, git-ignored);
# it is wiped at each run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ASN1C_BENCH_DIR:-$here/build}
runs=${1:-7}
seconds=${2:-1}
CFLAGS=(-O2 -DNDEBUG -w)   # -w: asn1c 0.9.28 skeletons are noisy under gcc 12 warnings

# --- tools --------------------------------------------------------------------------------------
missing=()
command -v asn1c >/dev/null || missing+=(asn1c)
command -v gcc >/dev/null || missing+=(gcc)
for t in ld nm objcopy; do command -v "$t" >/dev/null || { missing+=(binutils); break; }; done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
asn1c_version=$(asn1c -v 2>&1 | head -n1)
gcc_version=$(gcc --version | head -n1)

# --- are the adapted copies still in step with asn1/? ---------------------------------------------
# expected.diff holds `diff -u asn1/X benches/asn1c/asn1/X` for the two adapted modules; if asn1/
# has moved on, the copies should be refreshed (re-apply the changes listed in README.md).
mkdir -p "$out"
: >"$out/now.diff"
for m in csta-phase3 csta-phase2; do
    diff -u --label "asn1/$m.asn" --label "benches/asn1c/asn1/$m.asn" \
        "$root/asn1/$m.asn" "$here/asn1/$m.asn" >>"$out/now.diff" || true
done
if ! cmp -s "$out/now.diff" "$here/asn1/expected.diff"; then
    echo "WARNING: asn1/csta-phase{2,3}.asn differ from benches/asn1c/asn1/ by more than the listed" >&2
    echo "         adaptations (see $out/now.diff vs benches/asn1c/asn1/expected.diff): refresh the copies." >&2
fi

# --- generate ----------------------------------------------------------------------------------
# Phase III tree: ROSE + ACSE + Phase III. Phase II tree: Phase II alone (it defines the same
# type names as Phase III, so it is compiled apart and its global symbols get a p2_ prefix).
rm -rf "$out/p3" "$out/p2"
mkdir -p "$out/p3" "$out/p2"
(cd "$out/p3" && asn1c -fcompound-names "$root/asn1/rose.asn" "$root/asn1/acse.asn" "$here/asn1/csta-phase3.asn" >asn1c.log 2>&1) ||
    { cat "$out/p3/asn1c.log" >&2; exit 1; }
(cd "$out/p2" && asn1c -fcompound-names "$here/asn1/csta-phase2.asn" >asn1c.log 2>&1) ||
    { cat "$out/p2/asn1c.log" >&2; exit 1; }
grep -h -E "WARNING|FATAL" "$out/p3/asn1c.log" "$out/p2/asn1c.log" | sort | uniq -c | sed 's/^/asn1c: /' >&2 || true

# --- compile (one job: the machine has 2 cores and other builds may run) -----------------------
# Two builds of the same generated code:
#   as-generated  asn1c's own asn_internal.h: with EMIT_ASN_DEBUG unset, ASN_DEBUG is an empty
#                 static variadic function, so its arguments are still evaluated; among them
#                 ber_tlv_tag_string(), an snprintf() per tag check (over half the decode time);
#   no-debug-args -D'ASN_DEBUG(...)=do{}while(0)': the same calls compiled out (none of the 454
#                 ASN_DEBUG calls has a side effect in its arguments). The fairer C figure.
build_variant() { # name, extra gcc flags...
    local name=$1 v=$out/$1 tree f
    shift
    local flags=("${CFLAGS[@]}" "$@")
    rm -rf "$v"
    for tree in p3 p2; do
        mkdir -p "$v/$tree"
        for f in "$out/$tree"/*.c; do
            [[ $(basename "$f") == converter-sample.c ]] && continue   # asn1c's example main()
            gcc "${flags[@]}" -I"$out/$tree" -c "$f" -o "$v/$tree/$(basename "${f%.c}").o"
        done
    done
    ld -r -o "$v/p2-all.o" "$v"/p2/*.o
    nm -g --defined-only "$v/p2-all.o" | awk '{print $3, "p2_" $3}' >"$v/p2.syms"
    objcopy --redefine-syms="$v/p2.syms" "$v/p2-all.o" "$v/p2.o"
    gcc "${flags[@]}" -I"$out/p3" -o "$v/harness" "$here/harness.c" "$v"/p3/*.o "$v/p2.o"
}
nfiles=$(ls "$out/p3"/*.c "$out/p2"/*.c | grep -vc converter-sample.c)
echo "compiling generated code ($nfiles files, twice, gcc ${CFLAGS[*]}) ..." >&2
build_variant as-generated
build_variant no-debug-args '-DASN_DEBUG(...)=do{}while(0)'

# --- run ---------------------------------------------------------------------------------------
echo "$asn1c_version (asn1c -fcompound-names); $gcc_version; gcc ${CFLAGS[*]}"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs; $(date -u +%Y-%m-%d)"
for variant in as-generated no-debug-args; do
    echo "== $variant"
    "$out/$variant/harness" "$root/captures" "$runs" "$seconds"
done
