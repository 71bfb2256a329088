#!/usr/bin/env bash
# The ovs_flows collector against `ovs-dpctl dump-flows > /dev/null` on 10,000 and
# 100,000 datapath flows, in the same qemu guest (tests/vm, scenario "bench"): collector
# duration (its own metric) and exporter peak RSS, against ovs-dpctl's wall time and peak
# RSS (wait4). Both run under TCG, so absolute times are slow; the ratio is the result.
#
# usage: bench/ovs-flows-vm.sh            (as root on first use: it may install qemu)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.cache/vm/bench}
cargo build --release --quiet --example pptraffic
cargo build --release --quiet
tests/vm/run.sh --scenario bench --out "$out" --timeout 1500 --no-build \
    --exporter target/release/packetpath-exporter --pptraffic target/release/examples/pptraffic
r=$out/results.txt

# block NAME: the body of one result block.
block() { awk -v b="=== BEGIN $1 ===" -v e="=== END $1 ===" '$0==e{p=0} p; $0==b{p=1}' "$r"; }

printf '%-10s %8s %22s %22s %18s %18s %10s\n' flows dp_flows "collector ms (3 runs)" \
    "ovs-dpctl ms (3 runs)" "exporter HWM MiB" "ovs-dpctl max MiB" "ratio"
for size in flows10k flows100k; do
    flows=$(block "$size/dpctl-show" | awk '$1=="flows:"{print $2}')
    ours=() theirs=() theirs_rss=0
    for i in 1 2 3; do
        ours+=("$(block "$size/scrape$i" | awk -F'} ' '/duration_seconds\{collector="ovs_flows"\}/{printf "%.0f", $2*1000}')")
        theirs+=("$(block "$size/dpctl$i" | awk '$1=="wall_ms"{print $2}')")
        rss=$(block "$size/dpctl$i" | awk '$1=="maxrss_kb"{print $2}')
        [ "$rss" -gt "$theirs_rss" ] && theirs_rss=$rss
    done
    hwm=$(block "$size/exporter-status" | awk '$1=="VmHWM:"{print $2}')
    med() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
    ratio=$(awk -v a="$(med "${ours[@]}")" -v b="$(med "${theirs[@]}")" 'BEGIN{printf "%.3f", a/b}')
    printf '%-10s %8s %22s %22s %18s %18s %10s\n' "$size" "$flows" "${ours[*]}" "${theirs[*]}" \
        "$(awk -v k="$hwm" 'BEGIN{printf "%.1f", k/1024}')" \
        "$(awk -v k="$theirs_rss" 'BEGIN{printf "%.1f", k/1024}')" "$ratio"
done
echo "ratio: median collector time / median ovs-dpctl time; results: $r"
block flows100k/scrape1 | grep -E 'truncated|flows_by_action' || true
