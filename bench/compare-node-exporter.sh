#!/usr/bin/env bash
# Scrape time and peak RSS of packetpath-exporter against Debian's prometheus-node-exporter,
# both exporting per-interface counters and conntrack statistics for 2,000 veth devices in a
# dedicated network namespace.
#
# Usage (from the repository root):  sudo bench/compare-node-exporter.sh
#                                    sudo OURS=defaults bench/compare-node-exporter.sh
# Environment overrides:
#   OURS=interfaces  packetpath-exporter's collectors: `interfaces` (default) runs only
#                the interfaces and conntrack collectors, like for like with node_exporter;
#                `defaults` runs it with its default collectors (no collector flags), as
#                a node runs it; node_exporter is the same in both modes
#   N=200        measured scrapes per exporter (alternating, sequential)
#   WARMUP=5     unmeasured scrapes per exporter before measuring
#   PAIRS=1000   veth pairs to create (2 interfaces each)
#   NS=ppbench   network namespace name
#   OUR_PORT=19479 NODE_PORT=19100   listen ports inside the namespace
#   NODE_EXPORTER=prometheus-node-exporter
set -euo pipefail

N=${N:-200}
WARMUP=${WARMUP:-5}
PAIRS=${PAIRS:-1000}
NS=${NS:-ppbench}
OUR_PORT=${OUR_PORT:-19479}
NODE_PORT=${NODE_PORT:-19100}
OURS=${OURS:-interfaces}
# Debian's package on PATH, else the copy tests/run.sh unpacks under .cache.
NODE_EXPORTER=${NODE_EXPORTER:-prometheus-node-exporter}

die() { echo "compare-node-exporter: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, veth devices)"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[[ -f Cargo.toml ]] || die "$repo does not look like the repository root"
case $OURS in
interfaces) OUR_FLAGS=(--collector.disable-defaults --collector.interfaces --collector.conntrack) ;;
defaults) OUR_FLAGS=() ;;
*) die "OURS must be interfaces or defaults, not $OURS" ;;
esac
NODE_BIN=$(command -v "$NODE_EXPORTER" || command -v "$repo/.cache/node-exporter/usr/bin/prometheus-node-exporter") ||
    die "$NODE_EXPORTER not found (apt install prometheus-node-exporter, or run tests/run.sh once)"
command -v curl >/dev/null || die "curl not found"
command -v ip >/dev/null || die "ip (iproute2) not found"

# --- 1. build ---------------------------------------------------------------------------
echo "==> cargo build --release"
if [[ -n "${SUDO_USER:-}" && "$SUDO_USER" != root ]]; then
    # Build as the invoking user so target/ stays theirs; a login shell finds ~/.cargo/bin.
    sudo -u "$SUDO_USER" -H bash -lc 'cd "$1" && cargo build --release' _ "$repo"
else
    cargo build --release
fi
OUR_BIN=$repo/target/release/packetpath-exporter
[[ -x $OUR_BIN ]] || die "$OUR_BIN missing after build"

work=$(mktemp -d /tmp/ppbench.XXXXXX)
our_pid=""
node_pid=""
loop_pid=""
cleanup() {
    local rc=$?
    set +e
    for pid in $loop_pid $our_pid $node_pid; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 2. namespace with PAIRS veth pairs -------------------------------------------------
if ip netns list | grep -qw "^$NS"; then
    echo "==> removing stale namespace $NS"
    ip netns del "$NS"
fi
echo "==> creating namespace $NS with $PAIRS veth pairs ($((PAIRS * 2)) interfaces)"
ip netns add "$NS"
# No IPv6 in the namespace: no DAD, router solicitations or MLD traffic on the veths.
ip netns exec "$NS" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link set lo up
{
    for ((i = 0; i < PAIRS; i++)); do
        echo "link add vb${i}a type veth peer name vb${i}b"
    done
    for ((i = 0; i < PAIRS; i++)); do
        echo "link set vb${i}a up"
        echo "link set vb${i}b up"
    done
} >"$work/links.batch"
t0=$(date +%s.%N)
ip -n "$NS" -batch "$work/links.batch"
t1=$(date +%s.%N)
ndev=$(ip -n "$NS" -o link show | wc -l)
printf '    %d interfaces in %s (incl. lo), created in %.1f s\n' "$ndev" "$NS" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
[[ $ndev -eq $((PAIRS * 2 + 1)) ]] || die "expected $((PAIRS * 2 + 1)) interfaces, found $ndev"

# --- 3. start both exporters inside the namespace -----------------------------------------
# `ip netns exec` execs the command after setns, so $! is the exporter itself.
ip netns exec "$NS" "$OUR_BIN" \
    --web.listen-address="127.0.0.1:$OUR_PORT" \
    "${OUR_FLAGS[@]}" \
    --log.level=warn >"$work/ours.log" 2>&1 &
our_pid=$!
ip netns exec "$NS" "$NODE_BIN" \
    --web.listen-address="127.0.0.1:$NODE_PORT" \
    --collector.disable-defaults --collector.netdev --collector.conntrack \
    --log.level=warn >"$work/node.log" 2>&1 &
node_pid=$!

OUR_URL=http://127.0.0.1:$OUR_PORT/metrics
NODE_URL=http://127.0.0.1:$NODE_PORT/metrics
nsexec() { ip netns exec "$NS" "$@"; }

wait_ready() { # url pid name
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { cat "$work"/*.log >&2; die "$3 exited during startup"; }
        nsexec curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$3 did not answer on $1"
}
wait_ready "$OUR_URL" "$our_pid" packetpath-exporter
wait_ready "$NODE_URL" "$node_pid" node_exporter

check_pid() { # pid expected-binary
    local exe
    exe=$(readlink "/proc/$1/exe")
    [[ $exe == "$(readlink -f "$2")" ]] || die "pid $1 is $exe, not $2"
    echo "    pid $1: $exe"
}
echo "==> exporter processes"
check_pid "$our_pid" "$OUR_BIN"
check_pid "$node_pid" "$NODE_BIN"

# --- 4. scrapes -----------------------------------------------------------------------------
scrape() { nsexec curl -s -o /dev/null -w '%{time_total}\n' "$1"; }

echo "==> warm-up: $WARMUP scrapes each"
for ((i = 0; i < WARMUP; i++)); do
    scrape "$OUR_URL" >/dev/null
    scrape "$NODE_URL" >/dev/null
done

# CPU time (user + system, all threads) of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
our_cpu0=$(cpu_ticks "$our_pid")
node_cpu0=$(cpu_ticks "$node_pid")

# One namespace-entering shell runs the whole loop, so `ip netns exec` overhead is not in
# the timed part (curl measures its own request) and does not slow the loop down.
echo "==> measuring: $N scrapes each, alternating"
ip netns exec "$NS" bash -c '
    for ((i = 0; i < $1; i++)); do
        curl -s -o /dev/null -w "%{time_total}\n" "$2" >>"$4/ours.times"
        curl -s -o /dev/null -w "%{time_total}\n" "$3" >>"$4/node.times"
    done' _ "$N" "$OUR_URL" "$NODE_URL" "$work" &
loop_pid=$!
wait "$loop_pid" # in the background so that a signal interrupts the wait, not the loop
loop_pid=""

# CPU per scrape: what each exporter spent over the measured scrapes, divided by N. It
# depends far less than the wall time on what else the machine runs.
tck=$(getconf CLK_TCK)
our_cpu_ms=$(awk -v a="$our_cpu0" -v b="$(cpu_ticks "$our_pid")" -v n="$N" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) * 1000 / t / n }')
node_cpu_ms=$(awk -v a="$node_cpu0" -v b="$(cpu_ticks "$node_pid")" -v n="$N" -v t="$tck" 'BEGIN { printf "%.2f", (b - a) * 1000 / t / n }')

nsexec curl -s "$OUR_URL" >"$work/ours.txt"
nsexec curl -s "$NODE_URL" >"$work/node.txt"

hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
our_hwm=$(hwm_kb "$our_pid")
node_hwm=$(hwm_kb "$node_pid")

# quantile FILE Q: nearest-rank quantile, in milliseconds.
quantile() {
    sort -g "$1" | awk -v q="$2" '{ v[NR] = $1 } END {
        r = int(q * NR); if (r < q * NR) r++; if (r < 1) r = 1; printf "%.2f", v[r] * 1000 }'
}
series() { grep -vc '^#' "$1"; }
devices() { grep -c "^$2{" "$1" || true; }

our_med=$(quantile "$work/ours.times" 0.5)
our_p90=$(quantile "$work/ours.times" 0.9)
node_med=$(quantile "$work/node.times" 0.5)
node_p90=$(quantile "$work/node.times" 0.9)
[[ $(wc -l <"$work/ours.times") -eq $N && $(wc -l <"$work/node.times") -eq $N ]] ||
    die "missing scrape timings"

# --- report ------------------------------------------------------------------------------------
echo
echo "== versions"
echo "packetpath-exporter: $("$OUR_BIN" --version) ($(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD -- src build.rs Cargo.toml Cargo.lock 2>/dev/null || echo ', dirty tree'))"
echo "node_exporter:       $("$NODE_BIN" --version 2>&1 | head -1)"
echo "kernel:              $(uname -r); nproc $(nproc); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "packetpath-exporter collectors: $OURS (${OUR_FLAGS[*]:-no collector flags})"
echo "node_exporter netdev source: $( [[ -n $(grep '^node_network_receive_nohandler_total{' "$work/node.txt" | head -1) ]] && echo 'netlink (--collector.netdev.netlink default)' || echo '/proc/net/dev')"
echo
echo "== $N sequential scrapes each, $ndev interfaces in namespace $NS"
printf '%-22s %10s %10s %11s %8s %9s %10s %12s\n' exporter "median ms" "p90 ms" "CPU ms/scr" series devices "body KiB" "VmHWM MiB"
printf '%-22s %10s %10s %11s %8d %9d %10.0f %12.1f\n' packetpath-exporter "$our_med" "$our_p90" "$our_cpu_ms" \
    "$(series "$work/ours.txt")" "$(devices "$work/ours.txt" packetpath_interface_receive_packets_total)" \
    "$(($(wc -c <"$work/ours.txt") / 1024))" "$(awk -v k="$our_hwm" 'BEGIN { print k / 1024 }')"
printf '%-22s %10s %10s %11s %8d %9d %10.0f %12.1f\n' node_exporter "$node_med" "$node_p90" "$node_cpu_ms" \
    "$(series "$work/node.txt")" "$(devices "$work/node.txt" node_network_receive_packets_total)" \
    "$(($(wc -c <"$work/node.txt") / 1024))" "$(awk -v k="$node_hwm" 'BEGIN { print k / 1024 }')"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
if [[ $OURS == defaults ]]; then
    time_target=0.10 rss_target=0.33
else
    time_target=0.333 rss_target=0.5
fi
echo "ratio ours/node_exporter, median scrape time: $(ratio "$our_med" "$node_med")  (target <= $time_target)"
echo "ratio ours/node_exporter, peak RSS (VmHWM):   $(ratio "$our_hwm" "$node_hwm")  (target <= $rss_target)"
echo "ratio ours/node_exporter, CPU per scrape:     $(ratio "$our_cpu_ms" "$node_cpu_ms")"
