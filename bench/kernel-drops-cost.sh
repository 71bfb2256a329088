#!/usr/bin/env bash
# What the drops collector costs per dropped packet: the kernel's drop monitor in packet
# mode clones every dropped packet and sends an alert for it, and the exporter reads and
# counts them. Runs in the qemu test bed (tests/vm, scenario drops-bench), since the host
# has no drop_monitor module: a sender on CPU 0 floods bad-checksum TCP SYNs over a veth
# pair into a namespace that drops each one (TCP_CSUM), at each rate, with the monitor
# off, on (the exporter with --collector.drops, defaults) and, as a peer, dropwatch in
# packet mode with the same truncation and queue length; the phases take turns, ROUNDS
# times, so drift falls on all alike.
#
# Per drop, from the guest's counters:
#   CPU0      CPU 0's busy time (/proc/stat): the sender, its softirqs, ksoftirqd/0 and
#             the kworker that turns queued clones into netlink messages
#   tasks     the same from the tasks themselves: sender (wait4) + ksoftirqd/0 + CPU 0's
#             kworkers (schedstat); softirq time is charged to whoever ran it (the kernel
#             has no IRQ time accounting)
#   kworker   CPU 0's kworkers alone
#   reader    the exporter's (or dropwatch's) utime + stime, on CPU 1
# The kernel's count is the receiving namespace's Tcp InCsumErrors; "seen" is the share of
# those the reader counted (alerts with reason TCP_CSUM); lost and overruns are the exporter's reports_lost_total
# (kernel queue full) and socket_overruns_total (ENOBUFS) over the phases.
# Summary per rate: kernel cost of the monitor = CPU0 per drop (on) - CPU0 per drop
# (off), and the same for dropwatch; per-round spread in brackets.
#
# usage: bench/kernel-drops-cost.sh [--release trixie|bookworm|bullseye] [--no-build]
# Env: RATES="1000 10000 100000"  ROUNDS=3  SECONDS_PER_PHASE=10  MODES="off on dropwatch"
#      OUT=.cache/vm/drops-bench  (results.txt, console.log)
# Binaries: the static builds tests/vm/run.sh makes (CARGO_TARGET_DIR .cache/static-target).
set -euo pipefail
cd "$(dirname "$0")/.."

release=trixie build=()
while [ $# -gt 0 ]; do
    case $1 in
        --release) release=$2; shift ;;
        --no-build) build=(--no-build) ;;
        *) echo "usage: $0 [--release NAME] [--no-build]" >&2; exit 2 ;;
    esac
    shift
done
out=${OUT:-.cache/vm/drops-bench}
export PP_DROPS_RATES=${RATES:-1000 10000 100000}
export PP_DROPS_ROUNDS=${ROUNDS:-3}
export PP_DROPS_SECONDS=${SECONDS_PER_PHASE:-10}
export PP_DROPS_MODES=${MODES:-off on dropwatch}
# shellcheck disable=SC2086 # word lists
phases=$(( $(wc -w <<<"$PP_DROPS_RATES") * $(wc -w <<<"$PP_DROPS_MODES") * PP_DROPS_ROUNDS ))
# Boot (~60 s under TCG) and per phase its length, the 2 s cut-off margin, the exporter's
# or dropwatch's start and the 3 s drain.
timeout=$((180 + phases * (PP_DROPS_SECONDS + 15)))
echo "==> $release, rates $PP_DROPS_RATES, $PP_DROPS_ROUNDS rounds of $PP_DROPS_SECONDS s, modes $PP_DROPS_MODES ($phases phases, timeout ${timeout}s)"
tests/vm/run.sh --release "$release" --scenario drops-bench --out "$out" --timeout "$timeout" \
    "${build[@]}"
r=$out/results.txt

awk '
    match($0, /^=== BEGIN [0-9]+\/r[0-9]+\/(off|on|dropwatch) ===$/) {
        split(substr($0, 11, length($0) - 14), a, "/")
        rate = a[1]; round = substr(a[2], 2); mode = a[3]; key = rate SUBSEP mode; inb = 1
        if (!(rate in seen_rate)) { seen_rate[rate] = 1; rates[++nr] = rate }
        if (round > rounds) rounds = round
        next
    }
    /^=== END / { inb = 0; next }
    inb && NF == 2 {
        v[key, $1] += $2; vr[key, round, $1] = $2
    }
    function us(x, d) { return d > 0 ? x / d : 0 }
    # CPU 0 busy per drop in µs (USER_HZ ticks of 10 ms).
    function cpu0(k, r) { return r ? us(vr[k, r, "cpu0_ticks"] * 1e4, vr[k, r, "drops"]) : us(v[k, "cpu0_ticks"] * 1e4, v[k, "drops"]) }
    END {
        printf "%8s %-9s %9s %11s %9s %9s %9s %9s %7s %9s %9s\n", "rate", "mode", "drops", "achieved/s",
            "CPU0", "tasks", "kworker", "reader", "seen", "lost", "overruns"
        printf "%8s %-9s %9s %11s %9s %9s %9s %9s %7s %9s %9s\n", "set/s", "", "(sum)", "", "µs/drop",
            "µs/drop", "µs/drop", "µs/drop", "%", "(sum)", "(sum)"
        for (i = 1; i <= nr; i++) {
            rate = rates[i]
            for (m = 1; m <= 3; m++) {
                mode = m == 1 ? "off" : m == 2 ? "on" : "dropwatch"; k = rate SUBSEP mode
                d = v[k, "drops"]; if (d == "") continue
                tasks = v[k, "sender_s"] * 1e6 + (v[k, "softirqd_ns"] + v[k, "kworker_ns"]) / 1e3
                rt = mode == "on" ? v[k, "exporter_ticks"] : v[k, "dropwatch_ticks"]
                seen = mode == "on" ? v[k, "exporter_alerts_tcp_csum"] : v[k, "dropwatch_alerts"]
                printf "%8d %-9s %9d %11.0f %9.2f %9.2f %9.2f %9s %7s %9s %9s\n", rate, mode, d,
                    us(d * 100, v[k, "wall_cs"]), cpu0(k, 0), us(tasks, d), us(v[k, "kworker_ns"] / 1e3, d),
                    mode == "off" ? "-" : sprintf("%.2f", us(rt * 1e4, d)),
                    mode == "off" ? "-" : sprintf("%.1f", us(100 * seen, d)),
                    mode == "on" ? v[k, "reports_lost"] + 0 : "-",
                    mode == "on" ? v[k, "socket_overruns"] + 0 : "-"
            }
        }
        print ""
        print "monitor cost per drop, µs: kernel = CPU0 per drop (mode) - CPU0 per drop (off), [per-round min..max]"
        for (i = 1; i <= nr; i++) {
            rate = rates[i]; off = rate SUBSEP "off"
            for (m = 2; m <= 3; m++) {
                mode = m == 2 ? "on" : "dropwatch"; k = rate SUBSEP mode
                if (v[k, "drops"] == "" || v[off, "drops"] == "") continue
                lo = 1e18; hi = -1e18
                for (r = 1; r <= rounds; r++) {
                    if (vr[k, r, "drops"] == "" || vr[off, r, "drops"] == "") continue
                    x = cpu0(k, r) - cpu0(off, r); if (x < lo) lo = x; if (x > hi) hi = x
                }
                kern = cpu0(k, 0) - cpu0(off, 0)
                kw = us(v[k, "kworker_ns"] / 1e3, v[k, "drops"]) - us(v[off, "kworker_ns"] / 1e3, v[off, "drops"])
                rt = us((mode == "on" ? v[k, "exporter_ticks"] : v[k, "dropwatch_ticks"]) * 1e4, v[k, "drops"])
                printf "%8d %-9s kernel %6.2f [%.2f..%.2f] (kworker %.2f)  %s %6.2f  total %6.2f\n", rate, mode,
                    kern, lo, hi, kw, mode == "on" ? "exporter" : "dropwatch", rt, kern + rt
            }
        }
    }' "$r"
echo "results: $r"
