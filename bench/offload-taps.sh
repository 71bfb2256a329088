#!/usr/bin/env bash
# The offload collector's cost on a node with many VM ports: 2,000 TAPs and an uplink in a
# namespace; the exporter by default (tunnel, OVS and uplink devices only, asked for one
# by one), with --collector.offload.vm-ports (one dump), and with --no-collector.offload,
# in the same run; and, as the named peer, `ethtool -k` reading the same features of
# every TAP one by one.
#
# usage: bench/offload-taps.sh        (root: a network namespace; ethtool, curl)
# Env: N (scrapes each, default 30), TAPS (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-30} TAPS=${TAPS:-2000}
cargo build --release --quiet
bin=$PWD/target/release/packetpath-exporter
ns=pp-bench-offload-$$
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
nsx() { ip netns exec "$ns" "$@"; }
nsx ip link set lo up
nsx ip link add up0 type veth peer name up1
nsx ip addr add 10.9.0.1/24 dev up0
nsx ip link set up0 up
nsx ip link set up1 up
nsx ip route add default via 10.9.0.2
nsx ip link add vx0 type vxlan external dstport 4789
for ((i = 0; i < TAPS; i++)); do echo "tuntap add tap$i mode tap"; done >"$dir/taps"
nsx ip -batch "$dir/taps"

start() { # PORT FLAGS...
    local port=$1
    shift
    ip netns exec "$ns" "$bin" --web.listen-address="127.0.0.1:$port" --no-collector.ovsdb "$@" \
        >/dev/null 2>"$dir/e-$port.log" &
    pids+=($!)
    for _ in $(seq 100); do nsx curl -sf "http://127.0.0.1:$port/-/healthy" >/dev/null && return; sleep 0.1; done
    echo "exporter on $port did not start" >&2
    exit 1
}
start 19720
start 19721 --collector.offload.vm-ports
start 19722 --no-collector.offload
# What the kernel sends: the features dump (--collector.offload.vm-ports, most devices
# exported) and, by default, one reply per exported device.
mkdir "$dir/capture" "$dir/capture-default"
start 19723 --collector.disable-defaults --collector.offload --collector.offload.vm-ports \
    --debug.netlink-capture-dir="$dir/capture"
nsx curl -s -o /dev/null http://127.0.0.1:19723/metrics
start 19724 --collector.disable-defaults --collector.offload --debug.netlink-capture-dir="$dir/capture-default"
nsx curl -s -o /dev/null http://127.0.0.1:19724/metrics

scrape() { nsx curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$1/metrics"; }
offload_s() {
    nsx curl -s "http://127.0.0.1:$1/metrics" |
        awk '/^packetpath_scrape_collector_duration_seconds\{collector="offload"\}/ { print $2 }'
}
for p in 19720 19721 19722; do scrape $p >/dev/null; done
for p in 19720 19721 19722; do : >"$dir/t-$p"; : >"$dir/o-$p"; done
for _ in $(seq "$N"); do
    for p in 19720 19721 19722; do
        scrape $p >>"$dir/t-$p"
        offload_s $p >>"$dir/o-$p"
    done
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { if (NR) printf "%.2f", a[int((NR + 1) / 2)] * 1000; else printf "-" }'; }
series() { nsx curl -s "http://127.0.0.1:$1/metrics" | grep -c '^packetpath_interface_offload_' || true; }
echo "taps $TAPS, scrapes $N each, round-robin"
printf '%-28s %14s %18s %14s\n' exporter "median scrape ms" "offload median ms" "offload series"
for p in 19720 19721 19722; do
    case $p in 19720) name=default ;; 19721) name="--collector.offload.vm-ports" ;; *) name="--no-collector.offload" ;; esac
    printf '%-28s %14s %18s %14s\n' "$name" "$(median "$dir/t-$p")" "$(median "$dir/o-$p")" "$(series $p)"
done
bytes=$(stat -c %s "$dir/capture/ethtool_features_get.bin")
echo "features dump: $bytes bytes for $((TAPS + 5)) devices ($((bytes / (TAPS + 5))) bytes each)"
replies=("$dir"/capture-default/ethtool_features_get@*.bin)
[[ -e ${replies[0]} ]] || replies=()
[[ ! -e "$dir/capture-default/ethtool_features_get.bin" ]] || { echo "the default took a features dump" >&2; exit 1; }
echo "default: ${#replies[@]} per-device requests, $(cat "${replies[@]}" /dev/null | wc -c) bytes of replies"
start_ns=$(date +%s%N)
for ((i = 0; i < TAPS; i++)); do nsx ethtool -k "tap$i" >/dev/null; done
end_ns=$(date +%s%N)
echo "peer: ethtool -k on each of $TAPS TAPs: $(((end_ns - start_ns) / 1000000)) ms"
