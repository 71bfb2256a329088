#!/usr/bin/env bash
# Fuzzes every decoder of kernel or network bytes (fuzz/fuzz_targets, through
# src/fuzzing.rs) for FUZZ_SECONDS each (default 45), on the stable toolchain: libFuzzer
# with coverage instrumentation, no sanitizer (that would need nightly). Debug assertions
# and overflow checks are on, so a panic, an overflow, a hang (FUZZ_TIMEOUT seconds on one
# input, default 10) or running out of memory is a failure. Exits non-zero if any target
# finds one, naming the input it saved.
#
#   tests/fuzz.sh [TARGET...]           all targets, or only these
#   FUZZ_SECONDS=600 tests/fuzz.sh ovsdb
#
# Corpora live in .cache/fuzz-corpus/<target> (seeded by fuzz/seed.sh, kept between runs),
# logs in .cache/fuzz-logs, crashing inputs in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-45}
timeout=${FUZZ_TIMEOUT:-10}
corpus=.cache/fuzz-corpus
# The binaries are looked for in fuzz/target; the instrumented build never shares a
# target directory with the exporter's own.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
logs=.cache/fuzz-logs

# libFuzzer is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: g++"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "a C++ compiler (g++) is needed to build libFuzzer" >&2
        exit 1
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "no fuzz targets found in fuzz/" >&2
    exit 1
fi

fuzz/seed.sh "$corpus" >/dev/null
mkdir -p "$logs"
# Stable Rust: no sanitizer. One build for all targets, outside the fuzzing time; the
# binaries are then run as `cargo fuzz run --sanitizer none` runs them.
cargo fuzz build --sanitizer none
bin=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

failed=()
printf '%-14s %-8s %8s %8s %8s %10s\n' target result cov ft corpus exec/s
for t in "${targets[@]}"; do
    args=(-artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" -timeout="$timeout"
        -print_final_stats=1)
    [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
    log=$logs/$t.log
    mkdir -p "$corpus/$t" "fuzz/artifacts/$t"
    if "$bin/$t" "${args[@]}" "$corpus/$t" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
    fi
    # The last status line ("#N DONE cov: C ft: F corp: N/S ...") and the final stats.
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    field() { sed -nE "s|.* $1 ([0-9]+).*|\1|p" <<<"$status"; }
    rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+)/\1/p' "$log")
    printf '%-14s %-8s %8s %8s %8s %10s\n' "$t" "$result" \
        "$(field cov:)" "$(field ft:)" "$(field corp:)" "$rate"
    if [ "$result" = FAILED ]; then
        echo "--- $t: $log" >&2
        grep -E -A 30 "panicked at|ERROR: libFuzzer|==ERROR|SUMMARY" "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
        artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
        if [ -n "$artifact" ]; then
            echo "crashing input: $artifact ($(wc -c <"$artifact") bytes)" >&2
            od -An -v -tx1 "$artifact" | head -n 32 | tr -d '\n' | tr -s ' ' >&2
            echo >&2
            echo "reproduce: cargo fuzz run --sanitizer none $t $artifact" >&2
        fi
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
