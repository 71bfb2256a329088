# shellcheck shell=sh
# Load for the drops benchmark (bench/kernel-drops-cost.sh; sourced by /init; busybox sh).
#
# What the kernel's drop monitor (packet mode) costs per dropped packet, in the kernel and
# in the exporter. Namespace `dtx` sends bad-checksum TCP SYNs (`pptraffic churn
# --bad-checksum`, one tick every 10 ms) over a veth pair into namespace `drx`, whose TCP
# drops every one (reason TCP_CSUM, no reply; its Tcp InCsumErrors counter is the kernel's
# own count). The sender is pinned to CPU 0: the veth receive path and the drop run in
# softirq on CPU 0, in the sender's context or in ksoftirqd/0, and the monitor's clone and
# queueing with them; its netlink work (net_dm_packet_work) runs in a kworker of CPU 0.
# Everything else (this script, the exporter, dropwatch) is pinned to CPU 1, so CPU 0's
# busy time (/proc/stat) is the flood and what the monitor adds to it.
#
# For each rate, each round, three phases of PP_DROPS_SECONDS in turn:
#   off        no monitor
#   on         the exporter with --collector.drops alone (defaults: queue-len 1000)
#   dropwatch  dropwatch -l kas, alertmode packet, trunc 88, queue 1000 (the same session
#              the exporter asks for), its output counted by a grep on CPU 1
# A block per phase, `<rate>/r<round>/<mode>`, of `key value` lines (see phase_run).
# Settings (run.sh passes them): PP_DROPS_RATES (default "1000 10000 100000"),
# PP_DROPS_ROUNDS (3), PP_DROPS_SECONDS (10), PP_DROPS_MODES ("off on dropwatch").

DROPS_PORT=9479
DROPS_URL=http://127.0.0.1:$DROPS_PORT/metrics

scenario_prepare() {
    # /init waits for ovs-vswitchd's handler threads, which it starts for a bridge.
    ovs-vsctl --no-wait add-br br-drops
    # In the base, not loaded by /init (build-initramfs.sh: SCENARIO_MODULES).
    modprobe drop_monitor || fatal "modprobe drop_monitor failed"
}

in_rx() { /sbin/ip netns exec drx "$@"; }

drops_topology() {
    /sbin/ip netns add dtx
    /sbin/ip netns add drx
    /sbin/ip link add dtx0 netns dtx type veth peer name drx0 netns drx
    /sbin/ip -n dtx addr add 10.203.0.1/24 dev dtx0
    /sbin/ip -n drx addr add 10.203.0.2/24 dev drx0
    /sbin/ip -n dtx link set lo up
    /sbin/ip -n drx link set lo up
    /sbin/ip -n dtx link set dtx0 up
    /sbin/ip -n drx link set drx0 up
    # churn's sources: 10.204.0.0 + tuple / 64512.
    /sbin/ip -n drx route add 10.204.0.0/16 dev drx0
    in_rx sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.drx0.rp_filter=0
}

# The kernel's count: TCP segments drx dropped for a bad checksum.
kernel_drops() {
    in_rx cat /proc/net/snmp | awk '$1 == "Tcp:" && h { for (i = 2; i <= NF; i++) if (n[i] == "InCsumErrors") print $i; exit }
        $1 == "Tcp:" { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }'
}

# CPU 0's busy time in USER_HZ ticks: user nice system irq softirq steal.
cpu0_busy() { awk '$1 == "cpu0" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# On-CPU nanoseconds (schedstat) of ksoftirqd/0 and of every kworker of CPU 0, as
# `pid ns` lines.
cpu0_threads() {
    for _t in /proc/[0-9]*; do
        read -r _comm <"$_t/comm" 2>/dev/null || continue
        case $_comm in
            ksoftirqd/0 | kworker/0:*)
                read -r _ns _ _ <"$_t/schedstat" 2>/dev/null && echo "${_t#/proc/} $_comm $_ns" ;;
        esac
    done
}

# proc_ticks PID: utime + stime of a process (all its threads, living and gone), USER_HZ.
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# metric NAME [AWK-CONDITION]: the sum of a family's series on the exporter's page.
metric() {
    wget -q -O - "$DROPS_URL" | awk -v n="$1" -v c="${2:-}" '
        index($0, n "{") == 1 || $1 == n {
            if (c == "" || index(tolower($0), c)) s += $NF
        }
        END { printf "%.0f\n", s }'
}

exporter_up() {
    taskset -c 1 /bin/packetpath-exporter --web.listen-address=127.0.0.1:$DROPS_PORT \
        --collector.disable-defaults --collector.drops \
        --collector.drops.state-file=/run/drop-monitor.state 2>>"$EXPORTER_LOG" &
    DROPS_EXPORTER=$!
    wait_for 30 wget -q -O /dev/null http://127.0.0.1:$DROPS_PORT/-/healthy \
        || fatal "exporter did not start"
    wait_for 30 sh -c "wget -q -O - $DROPS_URL | grep -Eq '^packetpath_kernel_drop_monitor_active(\{.*\})? 1\$'" \
        || fatal "the drops collector did not start the monitor: $(tail -n 5 "$EXPORTER_LOG")"
}

exporter_down() {
    kill -TERM "$DROPS_EXPORTER"
    wait "$DROPS_EXPORTER" || true
    DROPS_EXPORTER=""
}

# dropwatch reads its commands from a FIFO held open by fd 4; its alerts go to a grep that
# counts those of the flood (reason TCP_CSUM).
dropwatch_up() {
    rm -f /tmp/dw.in /tmp/dw.count /tmp/dw.err
    mkfifo /tmp/dw.in
    (dropwatch -l kas </tmp/dw.in 2>/tmp/dw.err | grep -c '^drop reason: TCP_CSUM' >/tmp/dw.count) &
    DROPS_DW_PIPE=$!
    exec 4>/tmp/dw.in
    printf 'set alertmode packet\nset trunc 88\nset queue 1000\nstart\n' >&4
    wait_for 10 pidof dropwatch || fatal "dropwatch did not start: $(cat /tmp/dw.err)"
    DROPS_DW=$(pidof dropwatch)
    # Its stdout goes to the counting grep: give the start request time to be answered.
    sleep 2
}

dropwatch_down() {
    kill -INT "$DROPS_DW" 2>/dev/null || true
    sleep 1
    printf 'exit\n' >&4 2>/dev/null || true
    exec 4>&-
    wait_for 10 sh -c "! kill -0 $DROPS_DW" || kill -KILL "$DROPS_DW" 2>/dev/null || true
    wait "$DROPS_DW_PIPE" || true
    DROPS_DW=""
}

# phase_run RATE ROUND MODE: one phase; block RATE/rROUND/MODE:
#   drops           the kernel's count (drx's InCsumErrors)
#   wall_cs         the sender's wall time, centiseconds
#   cpu0_ticks      CPU 0's busy time, USER_HZ ticks (/proc/stat)
#   sender_s        the sender's user + system seconds (wait4)
#   softirqd_ns, kworker_ns  on-CPU ns of ksoftirqd/0 and of CPU 0's kworkers (schedstat)
#   exporter_ticks  the exporter's utime + stime (USER_HZ); its counts: alerts (all, and
#                   TCP_CSUM), reports_lost, socket_overruns
#   dropwatch_ticks, dropwatch_alerts (TCP_CSUM), dropwatch_errors (lines on its stderr)
phase_run() {
    _rate=$1 _round=$2 _mode=$3
    _tuples=$((_rate * PP_DROPS_SECONDS)) _per_tick=$((_rate / 100))
    case $_mode in
        on) exporter_up ;;
        dropwatch) dropwatch_up ;;
    esac
    if [ "$_mode" = on ]; then
        _m_all0=$(metric packetpath_kernel_drop_packets_total)
        _m_csum0=$(metric packetpath_kernel_drop_packets_total 'reason="tcp_csum"')
        _m_lost0=$(metric packetpath_kernel_drop_reports_lost_total)
        _m_over0=$(metric packetpath_kernel_drop_socket_overruns_total)
        _e0=$(proc_ticks "$DROPS_EXPORTER")
    fi
    [ "$_mode" != dropwatch ] || _d0=$(proc_ticks "$DROPS_DW")
    cpu0_threads >/tmp/threads0
    _k0=$(kernel_drops)
    _c0=$(cpu0_busy)
    _t0=$(awk '{ printf "%d", $1 * 100 }' /proc/uptime)
    # Cut at the phase's length plus 2 s when the sender cannot keep the rate (TCG).
    in_tx_sender timeout $((PP_DROPS_SECONDS + 2)) /bin/pptraffic churn --src 10.204.0.0 \
        --dst 10.203.0.2 --dport 80 --tuples "$_tuples" --repeat 1 --per-tick "$_per_tick" \
        --tick-ms 10 --flags syn --bad-checksum >/tmp/churn.out 2>&1 || true
    _t1=$(awk '{ printf "%d", $1 * 100 }' /proc/uptime)
    _c1=$(cpu0_busy)
    _k1=$(kernel_drops)
    cpu0_threads >/tmp/threads1
    # Let the monitor's queue and the readers drain, and the exporter read the kernel's
    # count of lost reports (every 2 s), before the counts are read.
    sleep 3
    {
        echo "rate_set $_rate"
        echo "drops $((_k1 - _k0))"
        echo "wall_cs $((_t1 - _t0))"
        echo "cpu0_ticks $((_c1 - _c0))"
        awk '$1 == "user" || $1 == "sys" { s += $2 } END { printf "sender_s %.2f\n", s }' /tmp/sender.time
        # By pid: a kworker's comm changes with the workqueue it last ran work for.
        awk 'NR == FNR { b[$1] = $3; next }
            { d = $3 - ($1 in b ? b[$1] : 0)
              if ($2 == "ksoftirqd/0") si += d; else kw += d }
            END { printf "softirqd_ns %.0f\nkworker_ns %.0f\n", si, kw }' /tmp/threads0 /tmp/threads1
        sed -n 's/^late_ticks /late_ticks /p; s/^packets /sender_packets /p' /tmp/churn.out
    } >/tmp/phase.out
    if [ "$_mode" = on ]; then
        _e1=$(proc_ticks "$DROPS_EXPORTER")
        {
            echo "exporter_ticks $((_e1 - _e0))"
            echo "exporter_alerts $(($(metric packetpath_kernel_drop_packets_total) - _m_all0))"
            echo "exporter_alerts_tcp_csum $(($(metric packetpath_kernel_drop_packets_total 'reason="tcp_csum"') - _m_csum0))"
            echo "reports_lost $(($(metric packetpath_kernel_drop_reports_lost_total) - _m_lost0))"
            echo "socket_overruns $(($(metric packetpath_kernel_drop_socket_overruns_total) - _m_over0))"
        } >>/tmp/phase.out
        exporter_down
    fi
    if [ "$_mode" = dropwatch ]; then
        _d1=$(proc_ticks "$DROPS_DW")
        dropwatch_down
        {
            echo "dropwatch_ticks $((_d1 - _d0))"
            echo "dropwatch_alerts $(cat /tmp/dw.count 2>/dev/null || echo 0)"
            echo "dropwatch_errors $(grep -vc -e '^dropwatch>' -e '^$' /tmp/dw.err || true)"
        } >>/tmp/phase.out
        emit "$_rate/r$_round/dropwatch-stderr" tail -n 20 /tmp/dw.err
    fi
    emit "$_rate/r$_round/$_mode" cat /tmp/phase.out
}

# in_tx_sender COMMAND...: runs COMMAND in dtx on CPU 0; its CPU time goes to
# /tmp/sender.time (busybox time -p: real, user, sys).
in_tx_sender() {
    /sbin/ip netns exec dtx taskset -c 0 time -p -o /tmp/sender.time "$@"
}

setup_info() {
    echo "rates $PP_DROPS_RATES rounds $PP_DROPS_ROUNDS seconds $PP_DROPS_SECONDS modes $PP_DROPS_MODES"
    echo "cpus $(grep -c '^processor' /proc/cpuinfo), $(grep -m 1 'model name' /proc/cpuinfo)"
    grep '^drop_monitor ' /proc/modules
    command -v dropwatch
}

scenario_run() {
    : "${PP_DROPS_RATES:=1000 10000 100000}" "${PP_DROPS_ROUNDS:=3}" "${PP_DROPS_SECONDS:=10}"
    : "${PP_DROPS_MODES:=off on dropwatch}"
    # OVS is not part of this bench: stop it so it adds no noise.
    ovs-appctl -t ovs-vswitchd exit || true
    ovs-appctl -t ovsdb-server exit || true
    # This shell and everything it starts run on CPU 1 unless told otherwise.
    taskset -pc 1 $$ >/dev/null
    drops_topology
    emit setup setup_info
    # A first flood warms the path (neighbour entry, page cache of the binaries).
    in_tx_sender /bin/pptraffic churn --src 10.204.0.0 --dst 10.203.0.2 --dport 80 \
        --tuples 1000 --repeat 1 --per-tick 100 --tick-ms 10 --flags syn --bad-checksum >/dev/null
    for _r in $(seq "$PP_DROPS_ROUNDS"); do
        for _rate in $PP_DROPS_RATES; do
            for _mode in $PP_DROPS_MODES; do
                phase_run "$_rate" "$_r" "$_mode"
            done
        done
    done
    emit exporter-log cat "$EXPORTER_LOG"
}
