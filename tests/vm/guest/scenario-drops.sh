# shellcheck shell=sh
# Kernel drops against the kernel's own count (sourced by /init; busybox sh).
#
#   netns remote                         root netns: the compute host
#   gnv1 (kernel geneve, vni 100)        br-int (fail-mode=secure, no conntrack)
#   10.0.0.1 ──── ul1 ═══ veth ═══ ul0 ──── genev_sys_6081 ─┬─ tap0  VM A (reader stopped: never reads)
#                 192.168.100.1     192.168.100.2            ├─ tap1  VM B (no process: no carrier)
#                                                            └─ tap2  VM C (a reader; OpenFlow drops to it)
#
# OpenFlow: frames from the tunnel go by destination MAC to A's, B's or C's port, except
# C's, which a drop rule takes. The three TAPs carry os-vif's external_ids (iface-id,
# attached-mac, ...), so the exporter can name the VM port whose frames were dropped.
#
# The kernel's own count: a hist trigger on skb:kfree_skb keyed by reason (6.1, 6.12); on
# 5.10 (no reasons, and the cloud kernel has no hist triggers) one tracefs instance per
# kernel function, its kfree_skb event filtered on that function's address range, whose
# per-CPU `entries + overrun` counts every event written. Both are set up before any drop
# is induced and never reset: block <phase>/kernel-before and -after hold `reason count`
# lines (`function:NAME count` and `all count` on 5.10), the raw hist in <phase>/hist.
#
# Phases (each: kernel-before, metrics-before, the drops, kernel-after, metrics-after, plan):
#   full_ring  3,000 TCP SYNs through the tunnel to A, whose reader is stopped: the TAP's ring
#              holds 1,000 (tx_queue_len), the rest is FULL_RING (5.10: tun_net_xmit)
#   dev_ready  50 to B, a TAP no process holds: DEV_READY on 6.12
#   netfilter  40 SYNs from remote to the host's 192.168.100.2:7000-7039, dropped by an nftables
#              input rule on ul0: NETFILTER_DROP (5.10: nf_hook_slow), device ul0
#   tunnel_fw  25 to A while an nftables input rule drops Geneve (UDP 6081) on ul0:
#              NETFILTER_DROP of encapsulated packets, counted for genev_sys_6081 (tunnel)
#   ovs_drop   30 to C, which an OpenFlow rule drops: OVS_DROP_* on 6.12 only; on 5.10/6.1 the
#              datapath's empty action list frees the packet with consume_skb (no drop)
#   netns      20 SYNs from the host to a closed port in remote: NO_SOCKET in remote (ul1's
#              ifindex, another namespace) and NO_SOCKET here for the 20 RSTs back (ul0)
#   flood      100,000 SYNs to A as fast as pptraffic sends: exporter + reports lost = kernel
#   neighbour  a second exporter with the drops collector (another port, the same default
#              state file) while the first runs: the second reports success 0, changes
#              nothing; 500 drops, the second stopped (SIGTERM), 500 more: the first counts all
#   restart    the first exporter killed (-9), a fresh one started: it stops the orphaned
#              session and starts its own; 1,000 FULL_RING + 40 NETFILTER_DROP counted
#   competitor while the exporter monitors: drop_monitor cannot be unloaded (in use);
#              dropwatch's `start` is refused and changes nothing; dropwatch's `stop` stops
#              the monitor under the exporter (success 0), the module is unloaded (success 0,
#              "modprobe drop_monitor" logged) and loaded again: the exporter starts a new
#              session by itself (phase `recovered`: 20 frames to B counted on tap1)
#   exit       SIGTERM: the state file goes, and a new instance can start monitoring
#   capture    an exporter with the drops collector alone records what netlink gives it
#              (--debug.netlink-capture-dir) over 5 drops to B, 4 firewalled SYNs and 3
#              firewalled Geneve packets, stopped with SIGTERM; blocks capture/<file> hold
#              each file in hex (od), for tests/listener_replay.rs's fixtures

# shellcheck source=topology.sh
. /guest/topology.sh

EXPORTER_BASE_FLAGS="--web.listen-address=127.0.0.1:9479 --collector.disable-defaults \
--collector.interfaces --collector.ovsdb"
# The collector under test; run.sh's PP_EXPORTER_FLAGS replaces it (an exporter without it
# is restarted with the base flags alone: block exporter-start-failed).
DROPS_FLAGS="--collector.drops"
METRICS_URL=http://127.0.0.1:9479/metrics
STATE_DIR=/run/packetpath-exporter
TRACING=/sys/kernel/tracing

A_MAC=fa:16:3e:00:00:0a A_IP=10.0.0.10 A_ID=7b1e2c3d-0a0a-4a0a-8a0a-00000000000a
B_MAC=fa:16:3e:00:00:0b B_IP=10.0.0.11 B_ID=7b1e2c3d-0b0b-4b0b-8b0b-00000000000b
C_MAC=fa:16:3e:00:00:0c C_IP=10.0.0.12 C_ID=7b1e2c3d-0c0c-4c0c-8c0c-00000000000c
NF_PORT=7000
CLOSED_PORT=9
FLOOD=100000

# 5.10: the functions counted one by one (the callers of kfree_skb the phases make drop,
# and neighbours that may stand in for them on another build).
KFUNCS="tun_net_xmit nf_hook_slow tcp_v4_rcv kfree_skb_list __dev_queue_xmit \
__dev_xmit_skb do_output ovs_vport_send do_execute_actions ovs_dp_process_packet \
skb_queue_purge __skb_queue_purge sk_stream_kill_queues sch_direct_xmit dev_hard_start_xmit"

# --- topology ----------------------------------------------------------------------------

# vm_port NAME MAC ID: a VM port on br-int with os-vif's external_ids.
vm_port() {
    ovs-vsctl --no-wait add-port br-int "$1" -- set Interface "$1" \
        external_ids:iface-id="$3" external_ids:vm-uuid="$VM_UUID" \
        external_ids:attached-mac="$2" external_ids:iface-status=active
}

scenario_prepare() {
    underlay_up "$UL_HOST" "$UL_REMOTE"
    /sbin/ip -n remote link add gnv1 address "$GNV1_MAC" type geneve id 100 remote "$UL_HOST"
    /sbin/ip -n remote addr add "$REMOTE_IP/24" dev gnv1
    /sbin/ip -n remote link set gnv1 up
    /sbin/ip -n remote neigh replace "$A_IP" lladdr "$A_MAC" dev gnv1 nud permanent
    /sbin/ip -n remote neigh replace "$B_IP" lladdr "$B_MAC" dev gnv1 nud permanent
    /sbin/ip -n remote neigh replace "$C_IP" lladdr "$C_MAC" dev gnv1 nud permanent

    # A: held by a reader that is stopped before any frame arrives (never reads).
    /bin/pptraffic tap-reader --dev tap0 --count-file /tmp/a.count 2>/tmp/a-reader.err &
    A_READER=$!
    wait_for 10 test -s /tmp/a.count || fatal "tap0 reader did not start: $(cat /tmp/a-reader.err)"
    kill -STOP "$A_READER"
    /sbin/ip link set tap0 up
    # B: a persistent TAP no process holds (no carrier).
    /sbin/ip tuntap add dev tap1 mode tap
    /sbin/ip link set tap1 up
    # C: a reader that reads; OpenFlow drops what is meant for C.
    /bin/pptraffic tap-reader --dev tap2 --count-file /tmp/c.count 2>/tmp/c-reader.err &
    wait_for 10 test -s /tmp/c.count || fatal "tap2 reader did not start: $(cat /tmp/c-reader.err)"
    /sbin/ip link set tap2 up

    ovs-vsctl --no-wait add-br br-int -- set bridge br-int fail-mode=secure
    ovs-vsctl --no-wait add-port br-int gnv0 -- set interface gnv0 type=geneve \
        options:remote_ip="$UL_REMOTE" options:key=100
    vm_port tap0 "$A_MAC" "$A_ID"
    vm_port tap1 "$B_MAC" "$B_ID"
    vm_port tap2 "$C_MAC" "$C_ID"

    # The host's firewall drops one TCP port from the underlay.
    modprobe nf_tables || fatal "modprobe nf_tables failed"
    cat >/tmp/pp.nft <<EOF
table inet pp {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "ul0" tcp dport $NF_PORT-$((NF_PORT + 999)) drop
    }
}
EOF
    emit nft-load nft -f /tmp/pp.nft

    modprobe drop_monitor || fatal "modprobe drop_monitor failed"
    kernel_count_setup
    emit kernel-setup kernel_count_info

    [ -n "$PP_EXPORTER_FLAGS" ] || PP_EXPORTER_FLAGS=$DROPS_FLAGS
    DROPS_FLAGS=$PP_EXPORTER_FLAGS
    start_exporter
}

ports_up() {
    _ports=$(ovs-dpctl show) || return 1
    for _p in genev_sys_6081 tap0 tap1 tap2; do
        case $_ports in *"$_p"*) ;; *) return 1 ;; esac
    done
}

add_flows() {
    cat >/tmp/flows.txt <<EOF
table=0,priority=100,in_port=gnv0,dl_dst=$A_MAC,actions=output:tap0
table=0,priority=100,in_port=gnv0,dl_dst=$B_MAC,actions=output:tap1
table=0,priority=100,in_port=gnv0,dl_dst=$C_MAC,actions=drop
EOF
    ovs-ofctl add-flows br-int /tmp/flows.txt || fatal "ovs-ofctl add-flows failed"
}

# --- the kernel's count ------------------------------------------------------------------

kernel_count_setup() {
    mount -t tracefs nodev "$TRACING" || fatal "cannot mount tracefs"
    _ev=$TRACING/events/skb/kfree_skb
    if [ -e "$_ev/hist" ]; then
        KERNEL_MODE=hist
        # Keyed by the function too (kernel_counts sums over it): block <phase>/hist says
        # which function dropped.
        echo 'hist:keys=reason,location.sym:vals=hitcount:sort=reason' >"$_ev/trigger" \
            || fatal "hist trigger on kfree_skb refused"
        return 0
    fi
    # 5.10: no reason, and no hist triggers in the cloud kernel. One instance per function,
    # filtered on [start, next symbol): kallsyms addresses are 16 hex digits, so they
    # compare as strings.
    KERNEL_MODE=functions
    sysctl -qw kernel.kptr_restrict=0
    sort /proc/kallsyms | awk -v want=" $KFUNCS " '
        $2 !~ /^[tTwW]$/ { next }
        open != "" && $1 > start { print open, start, $1; open = "" }
        open == "" && index(want, " " $3 " ") && !($3 in done) { done[$3] = 1; open = $3; start = $1 }
    ' >/tmp/kfuncs.txt
    _inst=$TRACING/instances
    mkdir "$_inst/all"
    echo 64 >"$_inst/all/buffer_size_kb"
    echo 1 >"$_inst/all/events/skb/kfree_skb/enable"
    while read -r _f _start _end; do
        mkdir "$_inst/f_$_f"
        echo 64 >"$_inst/f_$_f/buffer_size_kb"
        echo "location >= 0x$_start && location < 0x$_end" \
            >"$_inst/f_$_f/events/skb/kfree_skb/filter" || fatal "filter for $_f refused"
        echo 1 >"$_inst/f_$_f/events/skb/kfree_skb/enable"
    done </tmp/kfuncs.txt
    # The first callers of kfree_skb in every phase, with their stacks (top-level buffer).
    echo 4096 >"$TRACING/buffer_size_kb"
}

kernel_count_info() {
    echo "mode $KERNEL_MODE"
    if [ "$KERNEL_MODE" = hist ]; then
        cat "$TRACING/events/skb/kfree_skb/trigger"
    else
        cat /tmp/kfuncs.txt
        for _d in "$TRACING"/instances/*; do
            echo "${_d##*/} filter: $(cat "$_d/events/skb/kfree_skb/filter")"
        done
    fi
}

# instance_count DIR: events written to an instance's buffer (entries + overrun, all CPUs).
instance_count() {
    cat "$1"/per_cpu/cpu*/stats | awk '$1 == "entries:" || $1 == "overrun:" { n += $2 } END { print n + 0 }'
}

# reason_names: `number NAME` for the core reasons (the tracepoint's print fmt) and the
# OVS subsystem's (3 << 16 | n, in the order of net/openvswitch/drop.h; not in the fmt).
reason_names() {
    tr '{' '\n' <"$TRACING/events/skb/kfree_skb/format" \
        | sed -n 's/^ *\([0-9][0-9]*\), *"\([A-Z0-9_]*\)" *}.*/\1 \2/p'
    _n=196609
    for _r in LAST_ACTION ACTION_ERROR EXPLICIT EXPLICIT_WITH_ERROR METER RECURSION_LIMIT \
        DEFERRED_LIMIT FRAG_L2_TOO_LONG FRAG_INVALID_PROTO CONNTRACK IP_TTL; do
        echo "$_n OVS_DROP_$_r"
        _n=$((_n + 1))
    done
}

# kernel_counts: `reason count` (hist) or `function:NAME count` and `all count` lines.
kernel_counts() {
    if [ "$KERNEL_MODE" = hist ]; then
        reason_names >/tmp/reason-names.txt
        awk 'NR == FNR { name[$1] = $2; next }
            /^\{ reason:/ { r = $3; sub(/,$/, "", r); n[r] += $NF }
            END { for (r in n) print (r in name ? name[r] : "reason:" r), n[r] }' \
            /tmp/reason-names.txt "$TRACING/events/skb/kfree_skb/hist"
    else
        echo "all $(instance_count "$TRACING/instances/all")"
        while read -r _f _; do
            echo "function:$_f $(instance_count "$TRACING/instances/f_$_f")"
        done </tmp/kfuncs.txt
    fi
}

kernel_snapshot() {
    emit "$1" kernel_counts
}

kernel_detail() {
    if [ "$KERNEL_MODE" = hist ]; then
        emit "$phase/hist" cat "$TRACING/events/skb/kfree_skb/hist"
    else
        emit "$phase/stacks" sh -c "grep -v '^#' $TRACING/trace | head -n 120"
        emit "$phase/instances" sh -c "for d in $TRACING/instances/*; do echo \"\${d##*/}\"; cat \$d/per_cpu/cpu*/stats | grep -E '^(entries|overrun)'; done"
    fi
}

# stacks_arm: the first 8 kfree_skb calls of the phase leave their stack (5.10 only).
stacks_arm() {
    [ "$KERNEL_MODE" = functions ] || return 0
    echo '!stacktrace:8' >"$TRACING/events/skb/kfree_skb/trigger" 2>/dev/null || true
    echo >"$TRACING/trace"
    echo 'stacktrace:8' >"$TRACING/events/skb/kfree_skb/trigger" || true
}

# --- the exporter ------------------------------------------------------------------------

# scrape BLOCK [URL]: (Busybox 1.35's wget -T crashes; busybox timeout bounds it instead.)
scrape() { emit "$1" timeout 60 wget -q -O - "${2:-$METRICS_URL}"; }

# drops_seen: the drop series and reports lost, summed (0 when there are none). Not
# lo's: every scrape's own connection drops what it holds when it closes (QUEUE_PURGE), so
# a sum with lo's would never stop moving.
drops_seen() {
    timeout 60 wget -q -O - "$METRICS_URL" 2>/dev/null | awk '
        /device="lo"/ { next }
        /^packetpath_kernel_drop_packets_total[{ ]/ || /^packetpath_kernel_drop_reports_lost_total[{ ]/ { n += $NF }
        END { printf "%.0f\n", n }'
}

# settle_exporter: waits until the exporter's drop counts stop moving (the drop monitor
# sends its alerts from a work queue; a phase ends when they have all been read), at
# most 30 s.
settle_exporter() {
    _last=$(drops_seen)
    _deadline=$(($(uptime_s) + 30))
    while [ "$(uptime_s)" -lt "$_deadline" ]; do
        sleep 1
        _now=$(drops_seen)
        [ "$_now" != "$_last" ] || return 0
        _last=$_now
    done
}

# start_second PORT PIDVAR: another instance with the same drops flags (and the default
# state file), serving on PORT.
start_instance() {
    # shellcheck disable=SC2086 # the flags are meant to split
    /bin/packetpath-exporter --web.listen-address=127.0.0.1:"$1" --collector.disable-defaults \
        --collector.ovsdb $DROPS_FLAGS 2>>"/tmp/exporter-$1.log" &
    INSTANCE_PID=$!
    wait_for 15 wget -q -O /dev/null "http://127.0.0.1:$1/-/healthy" \
        || note "$phase/instance-$1-not-serving" "$(cat "/tmp/exporter-$1.log")"
}

# stop_pid PID SIGNAL: sends SIGNAL and reaps; prints the exit status.
stop_pid() {
    kill "-$2" "$1" 2>/dev/null || true
    _rc=0
    wait "$1" || _rc=$?
    echo "exit status $_rc"
}

# drops_success VALUE: the first exporter's drops collector reports success VALUE.
drops_success() {
    timeout 30 wget -q -O - "$METRICS_URL" | grep -qx "packetpath_scrape_collector_success{collector=\"drops\"} $1"
}

state_file() { ls -la "$STATE_DIR" 2>&1; for _f in "$STATE_DIR"/*; do [ -f "$_f" ] && { echo "--- $_f"; cat "$_f"; echo; }; done; true; }

# --- traffic -----------------------------------------------------------------------------

# to_vm IP DPORT COUNT: SYNs from the remote hypervisor through the tunnel.
to_vm() {
    /sbin/ip netns exec remote /bin/pptraffic tcp --src "$REMOTE_IP" --dst "$1" \
        --sport "$SPORT" --dport "$2" --count "$3" --flags syn >>"/tmp/traffic-$phase.log" 2>&1 \
        || fatal "pptraffic tcp to $1 failed: $(tail -n 3 "/tmp/traffic-$phase.log")"
}

# to_host COUNT: SYNs from the remote underlay address to the host's NF_PORT.. (one port a
# SYN; nftables drops NF_PORT to NF_PORT + 999).
to_host() {
    /sbin/ip netns exec remote /bin/pptraffic tcp --src "$UL_REMOTE" --dst "$UL_HOST" \
        --sport "$SPORT" --dport "$NF_PORT" --count "$1" --flags syn >>"/tmp/traffic-$phase.log" 2>&1 \
        || fatal "pptraffic tcp to the host failed: $(tail -n 3 "/tmp/traffic-$phase.log")"
}

# to_remote COUNT: SYNs from the host to a closed port of remote's underlay address.
to_remote() {
    /bin/pptraffic tcp --src "$UL_HOST" --dst "$UL_REMOTE" --sport "$SPORT" \
        --dport "$CLOSED_PORT" --count "$1" --flags syn >>"/tmp/traffic-$phase.log" 2>&1 \
        || fatal "pptraffic tcp to remote failed: $(tail -n 3 "/tmp/traffic-$phase.log")"
}

now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

begin_phase() {
    phase=$1
    : >"/tmp/traffic-$phase.log"
    settle_exporter
    kernel_snapshot "$phase/kernel-before"
    scrape "$phase/metrics-before"
    stacks_arm
    PHASE_START_MS=$(now_ms)
}

# end_phase PLAN: waits for the kernel's last drops and the exporter's last alerts.
end_phase() {
    _induced_ms=$(($(now_ms) - PHASE_START_MS))
    sleep 1
    settle_exporter
    kernel_snapshot "$phase/kernel-after"
    scrape "$phase/metrics-after"
    kernel_detail
    emit "$phase/sysfs" sh -c 'for d in tap0 tap1 tap2 ul0 genev_sys_6081; do for s in tx_packets tx_dropped rx_packets rx_dropped; do echo "$d $s $(cat /sys/class/net/$d/statistics/$s)"; done; done'
    emit "$phase/traffic" cat "/tmp/traffic-$phase.log"
    note "$phase/plan" "$1
induce_ms $_induced_ms
phase_ms $(($(now_ms) - PHASE_START_MS))"
}

# competitor: dropwatch, another user of the drop monitor, starts it (refused: the
# exporter's session runs) and stops it; the module is unloaded and loaded again; then
# phase `recovered` counts 20 frames to B.
competitor() {
    # dropwatch reads its commands from stdin and leaves at its end; `start` is refused
    # (EAGAIN) while the exporter's session runs.
    emit competitor/dropwatch-start sh -c 'printf "start\n" | timeout 10 dropwatch -l kas'
    scrape competitor/metrics-dropwatch-start
    emit competitor/dropwatch-stop sh -c 'printf "stop\n" | timeout 10 dropwatch -l kas'
    wait_for 10 drops_success 0 || note competitor/not-noticed "$(tail -n 5 "$EXPORTER_LOG")"
    scrape competitor/metrics-stopped
    emit competitor/rmmod sh -c 'rmmod drop_monitor; echo "rc $?"'
    # The exporter tries again 10 s after it lost its session, and finds no module; a
    # scrape logs why.
    wait_for 20 sh -c "wget -q -O /dev/null $METRICS_URL; grep -q 'modprobe drop_monitor' $EXPORTER_LOG"
    scrape competitor/metrics-unloaded
    emit competitor/exporter-log cat "$EXPORTER_LOG"
    modprobe drop_monitor || fatal "modprobe drop_monitor failed"
    wait_for 20 drops_success 1 || note competitor/not-recovered "$(tail -n 5 "$EXPORTER_LOG")"
    begin_phase recovered
    to_vm "$B_IP" 4000 20
    end_phase "sent 20
dst tap1"
}

# --- phases ------------------------------------------------------------------------------

scenario_run() {
    wait_for 30 ports_up || fatal "ports not in the datapath: $(ovs-dpctl show 2>&1)"
    add_flows
    phase=setup
    emit setup/interfaces ovs-vsctl --columns=name,ofport,external_ids list Interface
    emit setup/links sh -c '/sbin/ip -o link; echo "--- netns remote"; /sbin/ip -n remote -o link'
    emit setup/openflow ovs-ofctl dump-flows br-int
    emit setup/tap-queues sh -c 'for d in tap0 tap1 tap2; do echo "$d $(cat /sys/class/net/$d/tx_queue_len) carrier $(cat /sys/class/net/$d/carrier 2>/dev/null || echo -)"; done'
    sleep 2
    scrape setup/metrics

    begin_phase full_ring
    to_vm "$A_IP" 1000 3000
    end_phase "sent 3000
dst tap0"

    begin_phase dev_ready
    to_vm "$B_IP" 1000 50
    end_phase "sent 50
dst tap1"

    begin_phase netfilter
    to_host 40
    end_phase "sent 40
dst ul0"
    emit netfilter/nft nft list ruleset

    begin_phase tunnel_fw
    cat >/tmp/pp-gnv.nft <<EOF
table inet ppgnv {
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "ul0" udp dport 6081 drop
    }
}
EOF
    emit tunnel_fw/nft-add nft -f /tmp/pp-gnv.nft
    to_vm "$A_IP" 2000 25
    emit tunnel_fw/nft-del nft delete table inet ppgnv
    end_phase "sent 25
dst genev_sys_6081"

    begin_phase ovs_drop
    to_vm "$C_IP" 1000 30
    end_phase "sent 30
dst tap2"
    emit ovs_drop/dump-flows ovs-dpctl dump-flows -m
    emit ovs_drop/c-reader cat /tmp/c.count

    begin_phase netns
    to_remote 20
    end_phase "sent 20"

    begin_phase flood
    _sent=0
    while [ $_sent -lt $FLOOD ]; do
        _n=$((FLOOD - _sent))
        [ $_n -le 50000 ] || _n=50000
        to_vm "$A_IP" 10000 $_n
        _sent=$((_sent + _n))
    done
    end_phase "sent $FLOOD
dst tap0"

    begin_phase neighbour
    emit neighbour/state-file-first state_file
    start_instance 9480
    SECOND_PID=$INSTANCE_PID
    scrape neighbour/metrics-second http://127.0.0.1:9480/metrics
    to_vm "$A_IP" 20000 500
    emit neighbour/second-exit stop_pid "$SECOND_PID" TERM
    emit neighbour/second-log cat /tmp/exporter-9480.log
    emit neighbour/state-file-after-second state_file
    to_vm "$A_IP" 21000 500
    end_phase "sent 1000
dst tap0"

    # restart: the exporter killed outright leaves the kernel monitoring for no one.
    phase=restart
    emit restart/first-kill stop_pid "$EXPORTER_PID" KILL
    emit restart/state-file-orphaned state_file
    start_instance 9479
    EXPORTER_PID=$INSTANCE_PID
    EXPORTER_LOG=/tmp/exporter-9479.log
    begin_phase restart
    to_vm "$A_IP" 30000 1000
    to_host 40
    end_phase "sent_a 1000
sent_host 40"
    emit restart/exporter-log cat "$EXPORTER_LOG"

    phase=competitor
    emit competitor/rmmod-in-use sh -c 'rmmod drop_monitor; echo "rc $?"'
    if command -v dropwatch >/dev/null; then
        competitor
    else
        note competitor/no-dropwatch "this release has no dropwatch package"
    fi

    phase=exit
    emit exit/term stop_pid "$EXPORTER_PID" TERM
    emit exit/state-file state_file
    start_instance 9481
    scrape exit/metrics-next http://127.0.0.1:9481/metrics
    emit exit/next-term stop_pid "$INSTANCE_PID" TERM
    emit exit/next-log cat /tmp/exporter-9481.log
    emit exporter-log cat /tmp/exporter.log
    emit lsmod lsmod

    phase=capture
    mkdir -p /tmp/cap
    /bin/packetpath-exporter --web.listen-address=127.0.0.1:9482 --collector.disable-defaults \
        --collector.drops --collector.ovsdb.socket=/nonexistent/db.sock \
        --debug.netlink-capture-dir=/tmp/cap 2>/tmp/exporter-9482.log &
    _cap=$!
    wait_for 15 wget -q -O /dev/null http://127.0.0.1:9482/-/healthy \
        || note capture/not-serving "$(cat /tmp/exporter-9482.log)"
    to_vm "$B_IP" 3000 5
    to_host 4
    nft -f /tmp/pp-gnv.nft
    to_vm "$A_IP" 3100 3
    nft delete table inet ppgnv
    sleep 2
    scrape capture/metrics http://127.0.0.1:9482/metrics
    emit capture/term stop_pid "$_cap" TERM
    emit capture/log cat /tmp/exporter-9482.log
    for _f in /tmp/cap/*; do
        emit "capture/$(basename "$_f")" od -An -v -tx1 "$_f"
    done
}
