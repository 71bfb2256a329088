#!/usr/bin/env bash
# What logging conntrack-invalid packets costs the kernel, and what the conntrack_invalid
# governor leaves of it, in one run on the same flood.
#
# A client namespace sends bad-checksum TCP SYNs (each one conntrack-invalid) at RATE
# packets a second with `pptraffic churn` (a new 5-tuple per packet, one tick every 10 ms),
# pinned to SENDER_CPU, over a veth pair into a server namespace with
# nf_conntrack_checksum=1 and nftables dropping `ct state invalid`. The veth receive path,
# conntrack and the NFLOG message building run in softirq on the sender's CPU, in the
# sender's context or in that CPU's ksoftirqd, so the flood's cost is the on-CPU time of
# those two tasks (`perf stat -e task-clock -p SENDER,KSOFTIRQD`): the machine's other
# load is not in it, as it would be in the CPU's system + softirq time. It includes the
# sender's own user time, the same in every phase. Three phases of SECONDS_PER_PHASE
# each, ROUNDS times in turn (off, on, governed), so drift falls on all three alike:
#
#   off       nf_conntrack_log_invalid=0, no exporter: conntrack alone
#   on        the exporter with --collector.conntrack_invalid and max-rate 1e9 (no
#             governor): every invalid packet logged and read
#   governed  the exporter with its defaults: the governor pauses logging within its
#             1 s window and resumes after the back-off
#
# Figures, per phase: packets the kernel marked invalid (the nftables counter), messages
# the exporter read, its pauses, the flood's CPU (above) per invalid packet in µs, and the
# exporter's own CPU (utime + stime). Summary: the logging cost per message (on - off, per
# packet, plus the exporter's CPU per message); "governed, measured" = the governed
# phase's flood CPU minus the off phase's (same round) plus the exporter's CPU, as a share
# of one core; "governed, derived" = the governed phase's messages times the logging cost
# per message, over its wall time.
#
# Usage (from the repository root, as root):  bench/ctinv-kernel-cost.sh
# Environment: RATE=100000  SECONDS_PER_PHASE=20  ROUNDS=3  SENDER_CPU=0  EXPORTER_CPU=1
#              PORT=19610   MAX_RATE= (the governed phase's max-rate; default the flag's)
set -euo pipefail

RATE=${RATE:-100000}
PHASE=${SECONDS_PER_PHASE:-20}
ROUNDS=${ROUNDS:-3}
SENDER_CPU=${SENDER_CPU:-0}
EXPORTER_CPU=${EXPORTER_CPU:-1}
PORT=${PORT:-19610}
MAX_RATE=${MAX_RATE:-}
PER_TICK=$((RATE / 100))

die() { echo "ctinv-kernel-cost: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, sysctls, NFLOG)"
for tool in ip nft curl taskset awk perf pgrep; do
    command -v $tool >/dev/null || die "$tool not found"
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=bench/lib/conntrack-bed.sh
. "$repo/bench/lib/conntrack-bed.sh"
echo "==> cargo build --release (exporter and pptraffic)"
cargo build --release --quiet --bin packetpath-exporter --example pptraffic
BIN=$repo/target/release/packetpath-exporter
GEN=$repo/target/release/examples/pptraffic

SRV=ppkc-srv-$$
CLI=ppkc-cli-$$
work=$(mktemp -d /tmp/ppkcost.XXXXXX)
exporter_pid=""
sender_pid=""
cleanup() {
    local rc=$?
    set +e
    [[ -z $sender_pid ]] || { kill "$sender_pid"; wait "$sender_pid"; } 2>/dev/null
    [[ -z $exporter_pid ]] || { kill -TERM "$exporter_pid"; wait "$exporter_pid"; } 2>/dev/null
    ip netns del "$SRV" 2>/dev/null
    ip netns del "$CLI" 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

conntrack_bed
# Sources 10.202.x.y (pptraffic churn moves on to the next address every 64,512 tuples).
ip -n "$SRV" route add 10.202.0.0/16 dev s0

metric() { in_srv curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 == n {v = $2} END {printf "%d", v + 0}'; }
ksoftirqd=$(pgrep -x "ksoftirqd/$SENDER_CPU") || die "no ksoftirqd/$SENDER_CPU"
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
first=0

start_exporter() { # extra flags...
    taskset -c "$EXPORTER_CPU" ip netns exec "$SRV" "$BIN" \
        --web.listen-address="127.0.0.1:$PORT" --collector.disable-defaults \
        --collector.conntrack_invalid \
        --collector.conntrack_invalid.state-file "$work/state" "$@" 2>>"$work/exporter.log" &
    exporter_pid=$!
    for _ in $(seq 100); do
        in_srv curl -sf -o /dev/null "http://127.0.0.1:$PORT/-/healthy" && return
        sleep 0.1
    done
    die "exporter did not start: $(cat "$work/exporter.log")"
}
stop_exporter() {
    kill -TERM "$exporter_pid"
    wait "$exporter_pid" || true
    exporter_pid=""
}

# phase NAME: floods for PHASE seconds and prints one line.
phase() {
    local name=$1 tuples=$((RATE * PHASE)) i0 t0 e0=0 m0=0 p0=0 late perf_pid
    i0=$(nft_invalid) t0=$(date +%s%N)
    if [[ -n $exporter_pid ]]; then
        e0=$(proc_ticks "$exporter_pid") m0=$(metric packetpath_conntrack_invalid_log_messages_total)
        p0=$(metric packetpath_conntrack_invalid_logging_pauses_total)
    fi
    ip netns exec "$CLI" taskset -c "$SENDER_CPU" "$GEN" churn --src 10.202.0.0 \
        --dst 10.201.0.2 --dport 80 --tuples "$tuples" --first "$first" --repeat 1 \
        --per-tick "$PER_TICK" --tick-ms 10 --flags syn --bad-checksum >"$work/churn" &
    sender_pid=$!
    perf stat -x, -e task-clock -p "$sender_pid,$ksoftirqd" -o "$work/perf" &
    perf_pid=$!
    wait "$sender_pid"
    sender_pid=""
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    first=$((first + tuples))
    sleep 0.5
    # task-clock in ms, as jiffies (hz) like the exporter's CPU.
    local k inv=$(( $(nft_invalid) - i0 ))
    k=$(awk -F, -v hz="$hz" '$3 == "task-clock" {printf "%.0f", $1 / 1000 * hz}' "$work/perf")
    local wall_ns=$(( $(date +%s%N) - t0 )) e=0 m=0 p=0
    if [[ -n $exporter_pid ]]; then
        e=$(( $(proc_ticks "$exporter_pid") - e0 ))
        m=$(( $(metric packetpath_conntrack_invalid_log_messages_total) - m0 ))
        p=$(( $(metric packetpath_conntrack_invalid_logging_pauses_total) - p0 ))
    fi
    late=$(awk '$1 == "late_ticks" {print $2}' "$work/churn")
    awk -v n="$name" -v k="$k" -v inv="$inv" -v e="$e" -v m="$m" -v p="$p" -v hz="$hz" \
        -v w="$wall_ns" -v late="$late" 'BEGIN {
        printf "%-9s invalid %9d  rate %7.0f/s  late_ticks %4d  messages %9d  pauses %d  flood CPU %6.2f µs/pkt  exporter %6.2f s\n",
            n, inv, inv / (w / 1e9), late, m, p, (inv ? k / hz * 1e6 / inv : 0), e / hz }'
    echo "$name $k $inv $e $wall_ns $m" >>"$work/raw"
}

echo "==> RATE=$RATE/s, $PHASE s a phase, $ROUNDS rounds; sender CPU $SENDER_CPU, exporter CPU $EXPORTER_CPU"
governed=()
[[ -z $MAX_RATE ]] || governed=(--collector.conntrack_invalid.max-rate "$MAX_RATE")
for r in $(seq "$ROUNDS"); do
    echo "--- round $r"
    in_srv sh -c 'echo 0 > /proc/sys/net/netfilter/nf_conntrack_log_invalid'
    phase off
    start_exporter --collector.conntrack_invalid.max-rate 1000000000
    phase on
    stop_exporter
    start_exporter "${governed[@]}"
    phase governed
    stop_exporter
done

echo "==> summary"
awk -v hz="$hz" '
    {k[$1] += $2; n[$1] += $3; e[$1] += $4; m[$1] += $6; w[$1] += $5}
    $1 == "off" {off_per = $2 / $3}
    $1 == "governed" {
        extra = ($2 - off_per * $3 + $4) / hz
        printf "governed, measured, round %d: %.2f%% of a core\n", ++g, 100 * extra / ($5 / 1e9)
    }
    END {
        for (p in k) printf "%-9s %.2f µs flood CPU per invalid packet (%d packets), exporter %.2f s\n", p, k[p] / hz * 1e6 / n[p], n[p], e[p] / hz
        per_msg = ((k["on"] / n["on"] - k["off"] / n["off"]) * n["on"] + e["on"]) / m["on"] / hz
        printf "logging cost per message: %.2f µs (kernel %.2f, exporter %.2f)\n", per_msg * 1e6, (k["on"] / n["on"] - k["off"] / n["off"]) * n["on"] / m["on"] / hz * 1e6, e["on"] / m["on"] / hz * 1e6
        printf "governed, derived: %d messages in %.0f s: %.3f%% of a core\n", m["governed"], w["governed"] / 1e9, 100 * m["governed"] * per_msg / (w["governed"] / 1e9)
    }' "$work/raw"
