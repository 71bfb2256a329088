#!/usr/bin/env bash
# Throughput of the conntrack_invalid collector's NFLOG listener: how many conntrack-invalid
# log messages per second the exporter takes in, whether any are lost, and what they cost
# it in CPU time; then the same send with tcpdump bound to the group instead, for the CPU
# each of them spends per message.
#
# A client namespace sends COUNT zero-payload TCP FIN/ACKs with bad checksums (the seed
# incident's packets) over a veth pair, as fast as target/release/examples/pptraffic can,
# into a server namespace where nf_conntrack_checksum=1 and nftables drops
# `ct state invalid` (counting them). The release exporter runs in the server namespace
# with --collector.conntrack_invalid only. pptraffic sends at most 65,535 packets per run
# (one destination port each), so the send is a sequence of runs on different source ports.
#
# The peer: Debian's tcpdump (the script installs it with `apt-get install tcpdump` when it
# is missing) as `tcpdump -i nflog:0 -w /dev/null`, pinned to the same CPUs, after the
# exporter has exited: only one socket can bind group 0, and the two never run at once. It
# gets the same send and the same nf_conntrack_log_invalid=255 / nf_log/2=nfnetlink_log;
# its count is the "N packets captured" it prints (on SIGUSR1 while it runs, on SIGINT at
# the end), its loss the nftables counter minus that.
#
# Figures:
#   kernel invalid   the nftables counter: packets conntrack marked invalid
#   messages         packetpath_conntrack_invalid_log_messages_total
#   overruns, lost   ..._log_overruns_total (ENOBUFS), ..._log_lost_total (NFULA_SEQ gaps)
#   loss             kernel invalid - messages
#   send rate        COUNT / wall time of the send
#   receive rate     messages / (first send .. last message received)
#   CPU              the exporter's utime+stime (/proc/PID/stat) over the run
#   tcpdump          its "packets captured", loss against the nftables counter, and its
#                    utime+stime over its send and drain
#   ratio            the exporter's messages per CPU-second / tcpdump's (>= 1: the
#                    exporter spends at most tcpdump's CPU per message)
#
# Usage (from the repository root, as root):  bench/nflog-throughput.sh
# Environment:
#   COUNT=2000000     packets to send
#   SENDERS=1         pptraffic processes in parallel (each sends COUNT/SENDERS)
#   SENDER_CPUS=0     taskset CPU list for the senders (the kernel's receive path, conntrack
#                     and the NFLOG message building run there too, in softirq)
#   EXPORTER_CPUS=1   taskset CPU list for the exporter ("one core": a single CPU)
#   PORT=19600        exporter listen port inside the server namespace
#   BASELINE=1        first send COUNT packets with no exporter (nothing bound to the
#                     NFLOG group), to show the generator's own rate; 0 skips it
#   PEER=1            after the exporter, the same send to tcpdump; 0 skips it
#   TCPDUMP_ARGS=     more tcpdump arguments, e.g. "-B 4096" for a 4 MiB socket buffer
#                     (SO_RCVBUF: capped by net.core.rmem_max); by default none
set -euo pipefail

COUNT=${COUNT:-2000000}
SENDERS=${SENDERS:-1}
SENDER_CPUS=${SENDER_CPUS:-0}
EXPORTER_CPUS=${EXPORTER_CPUS:-1}
PORT=${PORT:-19600}
BASELINE=${BASELINE:-1}
PEER=${PEER:-1}
TCPDUMP_ARGS=${TCPDUMP_ARGS:-}
PER_RUN=65000

die() { echo "nflog-throughput: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, sysctls, NFLOG)"
for tool in ip nft curl taskset awk; do
    command -v $tool >/dev/null || die "$tool not found"
done
if [[ $PEER == 1 ]] && ! command -v tcpdump >/dev/null; then
    command -v apt-get >/dev/null || die "tcpdump not found (or PEER=0)"
    echo "==> apt-get install tcpdump"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null ||
        die "could not install tcpdump (or PEER=0)"
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=bench/lib/conntrack-bed.sh
. "$repo/bench/lib/conntrack-bed.sh"

echo "==> cargo build --release (exporter and pptraffic)"
cargo build --release --quiet
cargo build --release --quiet --example pptraffic
BIN=$repo/target/release/packetpath-exporter
GEN=$repo/target/release/examples/pptraffic

SRV=ppnf-srv-$$
CLI=ppnf-cli-$$
work=$(mktemp -d /tmp/ppnflog.XXXXXX)
exporter_pid=""
tcpdump_pid=""
# stop PID SIGNAL: signals a job of this shell and waits for it, SIGKILL after 10 s.
stop() {
    kill -"$2" "$1" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    for job in $(jobs -p); do
        [[ $job == "$exporter_pid" || $job == "$tcpdump_pid" ]] ||
            { pkill -TERM -P "$job"; kill -TERM "$job"; } 2>/dev/null
    done
    wait $(jobs -p | grep -vx -e "${exporter_pid:-none}" -e "${tcpdump_pid:-none}") 2>/dev/null
    [[ -z $exporter_pid ]] || stop "$exporter_pid" TERM
    [[ -z $tcpdump_pid ]] || stop "$tcpdump_pid" INT
    ip netns del "$SRV" 2>/dev/null
    ip netns del "$CLI" 2>/dev/null
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- namespaces, like tests/common ConntrackBed --------------------------------------------
conntrack_bed

scrape() { in_srv curl -sf "http://127.0.0.1:$PORT/metrics"; }
# metric NAME: its value in the last scrape ($work/m), 0 when absent.
metric() { awk -v n="$1" '$1 == n {v = $2} END {printf "%d", v + 0}' "$work/m"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now_ns() { date +%s%N; }
# cpu_busy: "cpuN busy total" per CPU from /proc/stat (jiffies; busy excludes idle and iowait).
cpu_busy() { awk '/^cpu[0-9]/ {b = 0; for (i = 2; i <= NF; i++) if (i != 5 && i != 6) b += $i; t = b + $5 + $6; print $1, b, t}' /proc/stat; }

# send TOTAL: TOTAL packets from SENDERS parallel pptraffic loops; sets send_ns to the wall
# time in ns. The loops are jobs of this shell, so the cleanup trap can stop them.
send() {
    local total=$1 per=$(( $1 / SENDERS )) start s pids=()
    start=$(now_ns)
    for ((s = 0; s < SENDERS; s++)); do
        (
            left=$per
            [[ $s -eq $((SENDERS - 1)) ]] && left=$((total - per * (SENDERS - 1)))
            run=0
            while ((left > 0)); do
                n=$((left < PER_RUN ? left : PER_RUN))
                # Source ports differ per sender and run, so no two runs share a flow.
                ip netns exec "$CLI" taskset -c "$SENDER_CPUS" "$GEN" tcp \
                    --src 10.201.0.1 --dst 10.201.0.2 --sport $((1024 + s * 1000 + run)) \
                    --dport 1 --flags finack --bad-checksum --count "$n" >/dev/null
                left=$((left - n))
                run=$((run + 1))
            done
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    send_ns=$(( $(now_ns) - start ))
}

hz=$(getconf CLK_TCK)
rate() { awk -v n="$1" -v ns="$2" 'BEGIN {printf "%.0f", (ns > 0 ? n / (ns / 1e9) : 0)}'; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.3f", ns / 1e9}'; }

# --- 1. the generator alone --------------------------------------------------------------
# nf_conntrack_log_invalid=255 with nf_log/2 = nfnetlink_log but no listener: conntrack
# still calls the logger, which finds no instance for group 0 and returns.
nf=/proc/sys/net/netfilter
orig_log_invalid=$(in_srv cat $nf/nf_conntrack_log_invalid)
orig_nf_log=$(in_srv cat $nf/nf_log/2)
if [[ $BASELINE == 1 ]]; then
    in_srv sh -c 'echo 255 > /proc/sys/net/netfilter/nf_conntrack_log_invalid; echo nfnetlink_log > /proc/sys/net/netfilter/nf_log/2'
    k0=$(nft_invalid)
    echo "==> baseline: $COUNT packets, no NFLOG listener"
    send "$COUNT"
    base_ns=$send_ns
    sleep 0.5
    base_invalid=$(( $(nft_invalid) - k0 ))
    in_srv sh -c "echo $orig_log_invalid > $nf/nf_conntrack_log_invalid; echo $orig_nf_log > $nf/nf_log/2"
fi

# --- 2. with the exporter ----------------------------------------------------------------
echo "==> exporter (CPUs $EXPORTER_CPUS) with --collector.conntrack_invalid"
taskset -c "$EXPORTER_CPUS" ip netns exec "$SRV" "$BIN" \
    --web.listen-address="127.0.0.1:$PORT" --collector.disable-defaults \
    --collector.conntrack_invalid \
    --collector.conntrack_invalid.state-file "$work/conntrack-invalid.state" \
    2>"$work/exporter.log" &
exporter_pid=$!
for _ in $(seq 100); do
    in_srv curl -sf "http://127.0.0.1:$PORT/-/healthy" >/dev/null 2>&1 && break
    kill -0 "$exporter_pid" 2>/dev/null || { cat "$work/exporter.log" >&2; die "exporter exited"; }
    sleep 0.1
done
scrape >"$work/m" || die "no metrics"
grep -q '^packetpath_scrape_collector_success{collector="conntrack_invalid"} 1' "$work/m" || {
    cat "$work/m" "$work/exporter.log" >&2
    die "conntrack_invalid collector is not running"
}
echo "    nf_conntrack_log_invalid=$(in_srv cat /proc/sys/net/netfilter/nf_conntrack_log_invalid)" \
    "nf_log/2=$(in_srv cat /proc/sys/net/netfilter/nf_log/2)"
msg0=$(metric packetpath_conntrack_invalid_log_messages_total)
ovr0=$(metric packetpath_conntrack_invalid_log_overruns_total)
lost0=$(metric packetpath_conntrack_invalid_log_lost_total)
k0=$(nft_invalid)
cpu0=$(cpu_ticks "$exporter_pid")

echo "==> sending $COUNT bad-checksum FIN/ACKs ($SENDERS sender(s), CPUs $SENDER_CPUS)"
cpu_busy >"$work/stat0"
t0=$(now_ns)
send "$COUNT"
ex_send_ns=$send_ns
cpu_busy >"$work/stat1"

# Drain: poll every 0.1 s until the message count has not moved for 0.3 s (the kernel
# flushes a partial batch to the collector after 100 ms); the receive window ends at the
# first poll that saw the final count.
last=-1
t_last=$(now_ns)
still=0
for _ in $(seq 600); do
    scrape >"$work/m"
    cur=$(metric packetpath_conntrack_invalid_log_messages_total)
    if [[ $cur == "$last" ]]; then
        still=$((still + 1))
        ((still < 3)) || break
    else
        still=0
        last=$cur
        t_last=$(now_ns)
    fi
    sleep 0.1
done
cpu1=$(cpu_ticks "$exporter_pid")
kernel=$(( $(nft_invalid) - k0 ))
msgs=$(( $(metric packetpath_conntrack_invalid_log_messages_total) - msg0 ))
ovr=$(( $(metric packetpath_conntrack_invalid_log_overruns_total) - ovr0 ))
lost=$(( $(metric packetpath_conntrack_invalid_log_lost_total) - lost0 ))
errors=$(metric packetpath_conntrack_invalid_log_errors_total)
fin_lt60=$(awk '/^packetpath_conntrack_invalid_packets_total\{.*reason="bad_checksum".*size_class="lt60".*tcp_flags="fin"/ {v += $2} END {printf "%d", v}' "$work/m")
recv_ns=$((t_last - t0))
cpu_s=$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
per_cpu_s=$(awk -v n="$msgs" -v c="$cpu_s" 'BEGIN {printf "%.0f", (c > 0 ? n / c : 0)}')

kill -TERM "$exporter_pid"
wait "$exporter_pid" || true
exporter_pid=""
restored=$(in_srv cat /proc/sys/net/netfilter/nf_conntrack_log_invalid)

# --- 3. the same send to tcpdump ---------------------------------------------------------
# Only once the exporter has exited: its NFLOG instance goes with its socket, and group 0
# must be free again (/proc/net/netfilter/nfnetlink_log lists bound groups).
# td_captured: the last "N packets captured" tcpdump printed (SIGUSR1 or exit), 0 if none.
td_captured() {
    awk '/packets captured/ {sub(/^tcpdump: /, ""); v = $1} END {printf "%d", v + 0}' "$work/tcpdump.log"
}
if [[ $PEER == 1 ]]; then
    for _ in $(seq 50); do
        [[ -z $(in_srv cat /proc/net/netfilter/nfnetlink_log 2>/dev/null) ]] && break
        sleep 0.1
    done
    [[ -z $(in_srv cat /proc/net/netfilter/nfnetlink_log 2>/dev/null) ]] ||
        die "NFLOG group 0 is still bound after the exporter exited"
    echo "==> tcpdump -i nflog:0 -w /dev/null $TCPDUMP_ARGS (CPUs $EXPORTER_CPUS)"
    # shellcheck disable=SC2086 # TCPDUMP_ARGS is words
    taskset -c "$EXPORTER_CPUS" ip netns exec "$SRV" tcpdump -i nflog:0 -w /dev/null $TCPDUMP_ARGS \
        2>"$work/tcpdump.log" &
    tcpdump_pid=$!
    for _ in $(seq 100); do
        grep -qs '^tcpdump: listening on nflog:0' "$work/tcpdump.log" && break
        kill -0 "$tcpdump_pid" 2>/dev/null || { cat "$work/tcpdump.log" >&2; die "tcpdump exited"; }
        sleep 0.1
    done
    grep -qs '^tcpdump: listening on nflog:0' "$work/tcpdump.log" || die "tcpdump is not listening"
    [[ $(cat "/proc/$tcpdump_pid/comm") == tcpdump ]] || die "pid $tcpdump_pid is not tcpdump"
    # What the exporter set while it ran (tcpdump binds nf_log/2 itself; set it anyway).
    in_srv sh -c "echo 255 > $nf/nf_conntrack_log_invalid; echo nfnetlink_log > $nf/nf_log/2"
    k0=$(nft_invalid)
    tcpu0=$(cpu_ticks "$tcpdump_pid")
    echo "==> sending $COUNT bad-checksum FIN/ACKs to tcpdump"
    cpu_busy >"$work/stat2"
    send "$COUNT"
    td_send_ns=$send_ns
    cpu_busy >"$work/stat3"
    td_kernel=$(( $(nft_invalid) - k0 ))
    # Drain: ask for the count (SIGUSR1) every 0.2 s until it reaches the kernel's or has
    # not moved for 1 s.
    last=-1
    still=0
    for _ in $(seq 300); do
        kill -USR1 "$tcpdump_pid"
        sleep 0.2
        cur=$(td_captured)
        ((cur < td_kernel)) || break
        if [[ $cur == "$last" ]]; then
            still=$((still + 1))
            ((still < 5)) || break
        else
            still=0
            last=$cur
        fi
    done
    tcpu1=$(cpu_ticks "$tcpdump_pid")
    stop "$tcpdump_pid" INT
    tcpdump_pid=""
    # On exit tcpdump prints "N packets captured" on a line of its own: the final count.
    grep -q '^[0-9]* packets captured$' "$work/tcpdump.log" || {
        cat "$work/tcpdump.log" >&2
        die "tcpdump printed no final count"
    }
    td_msgs=$(awk '/^[0-9]+ packets captured$/ {v = $1} END {print v}' "$work/tcpdump.log")
    td_dropped=$(awk '/^[0-9]+ packets dropped by kernel$/ {v = $1} END {print v + 0}' "$work/tcpdump.log")
    td_cpu_s=$(awk -v t=$((tcpu1 - tcpu0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
    td_per_cpu_s=$(awk -v n="$td_msgs" -v c="$td_cpu_s" 'BEGIN {printf "%.0f", (c > 0 ? n / c : 0)}')
    in_srv sh -c "echo $orig_log_invalid > $nf/nf_conntrack_log_invalid; echo $orig_nf_log > $nf/nf_log/2"
fi

echo
echo "=== nflog-throughput: $COUNT packets, kernel $(uname -r), $(nproc) CPUs ==="
if [[ $BASELINE == 1 ]]; then
    printf '%-34s %s packets in %s s = %s packets/s (kernel invalid %s)\n' \
        "generator alone (no listener):" "$COUNT" "$(secs "$base_ns")" "$(rate "$COUNT" "$base_ns")" "$base_invalid"
fi
printf '%-34s %s packets in %s s = %s packets/s\n' "send with the exporter:" \
    "$COUNT" "$(secs "$ex_send_ns")" "$(rate "$COUNT" "$ex_send_ns")"
printf '%-34s %s\n' "kernel invalid (nftables):" "$kernel"
printf '%-34s %s\n' "messages received:" "$msgs"
printf '%-34s %s (overruns %s, lost by NFULA_SEQ %s, decode errors %s)\n' \
    "loss (kernel - messages):" "$((kernel - msgs))" "$ovr" "$lost" "$errors"
printf '%-34s %s\n' "classified bad_checksum/lt60/fin:" "$fin_lt60"
printf '%-34s %s s = %s messages/s\n' "receive window (first send..last):" \
    "$(secs "$recv_ns")" "$(rate "$msgs" "$recv_ns")"
printf '%-34s %s s on CPUs %s = %s messages per CPU-second\n' "exporter CPU (utime+stime):" \
    "$cpu_s" "$EXPORTER_CPUS" "$per_cpu_s"
printf '%-34s %s\n' "CPU busy during the send:" "$(join "$work/stat0" "$work/stat1" |
    awk '{printf "%s %.0f%%  ", $1, 100 * ($4 - $2) / ($5 - $3)}')"
printf '%-34s %s (before the exporter: %s)\n' "log_invalid after SIGTERM:" "$restored" "$orig_log_invalid"
if [[ $PEER == 1 ]]; then
    echo
    printf '%-34s %s packets in %s s = %s packets/s\n' "send with tcpdump:" \
        "$COUNT" "$(secs "$td_send_ns")" "$(rate "$COUNT" "$td_send_ns")"
    printf '%-34s %s\n' "CPU busy during the send:" "$(join "$work/stat2" "$work/stat3" |
        awk '{printf "%s %.0f%%  ", $1, 100 * ($4 - $2) / ($5 - $3)}')"
    echo
    echo "tcpdump ran as: tcpdump -i nflog:0 -w /dev/null $TCPDUMP_ARGS"
    printf '%-10s %12s %12s %8s %8s %22s\n' "listener" "kernel" "messages" "lost" "CPU s" "messages/CPU-second"
    printf '%-10s %12s %12s %8s %8s %22s\n' "exporter" "$kernel" "$msgs" "$((kernel - msgs))" "$cpu_s" "$per_cpu_s"
    printf '%-10s %12s %12s %8s %8s %22s\n' "tcpdump" "$td_kernel" "$td_msgs" "$((td_kernel - td_msgs))" "$td_cpu_s" "$td_per_cpu_s"
    printf '(tcpdump: "%s packets dropped by kernel")\n' "$td_dropped"
    awk -v e="$per_cpu_s" -v t="$td_per_cpu_s" 'BEGIN {
        if (e > 0 && t > 0)
            printf "ratio exporter/tcpdump: messages per CPU-second %.2f, CPU per message %.2f (target: >= 1, <= 1)\n", e / t, t / e
    }'
fi
