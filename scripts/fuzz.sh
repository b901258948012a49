#!/usr/bin/env bash
# Fuzzes every hostile-input target in fuzz/ for a bounded time and fails on any finding.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, every target)
#
# Installs cargo-fuzz if missing. Only the stable toolchain is available, so RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its -Z flags; the sanitizer is AddressSanitizer (FUZZ_SANITIZER=none to turn it off).
# Limits: a single allocation over FUZZ_MALLOC_MB (256) MB, a process over FUZZ_RSS_MB (1536) MB or one input
# taking over 10 s counts as a finding, i.e. a target may not allocate more than its input justifies, or hang.
# New corpus entries go to a scratch folder (the committed seeds in fuzz/corpus/ are read-only inputs); a
# crashing input is left in fuzz/artifacts/<target>/: minimise it (`cargo fuzz tmin`), fix the library, and
# commit it to fuzz/regressions/<target>/ so tests/fuzz_regressions.rs replays it in every `cargo test`.
# Dictionaries in fuzz/dict/<target>.dict are used when present. Prints executions per target; exits non-zero if any target found something or failed to build.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
malloc_mb=${FUZZ_MALLOC_MB:-256}
rss_mb=${FUZZ_RSS_MB:-1536}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer "$sanitizer"

work=$(mktemp -d "${TMPDIR:-/tmp}/triton-llama-fuzz-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    seeds=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    log="$work/$t.log"
    set +e
    cargo fuzz run --sanitizer "$sanitizer" "$t" "$work/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -malloc_limit_mb="$malloc_mb" -rss_limit_mb="$rss_mb" \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    line=$(printf '%-18s %10s execs  %6s edges  %s' "$t" "${execs:-?}" "${cov:-?}" "$([ $rc -eq 0 ] && echo ok || echo "FINDING (rc $rc)")")
    echo "$line" >&2
    summary+=("$line")
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|out-of-memory|timeout' "$log" | head -20 >&2 || tail -40 "$log" >&2
    fi
done

echo "fuzz.sh: ${secs} s per target, sanitizer ${sanitizer}"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
