# shellcheck shell=sh
# Datapath flow churn with OVS's defaults (sourced by /init; busybox sh).
#
# The seed's topology (scenario-seed.sh; copied here, not sourced, so the two can change
# apart), but ovs-vswitchd keeps its defaults: flows idle out after 10 s and the revalidator
# modifies and deletes datapath flows as it would on a real host. /init's ovs_start_db pins
# other_config:max-idle, so scenario_prepare removes it before ovs-vswitchd starts.
#
#   netns remote                         root netns: the compute host
#   gnv1 (kernel geneve, vni 100)        br-int (fail-mode=secure)
#   10.0.0.1 ──── ul1 ═══ veth ═══ ul0 ──── genev_sys_6081 (port gnv0) ── ct ── tap0 ── "VM"
#
# OpenFlow (table 1 runs after ct):
#   table 0  ip → ct(table=1)
#   table 1  +trk+inv → drop                                     (prio 100)
#            +trk+new tcp dport 0x1400/0xff00 → ct(commit),tap0  (prio 95, rule R of `modify`)
#            +trk+new tcp dport 0x1500/0xff00 → controller(…)    (prio 95, the logged drop)
#            +trk+new / +trk+est ip → tap0                       (prio 90)
#   table 0  tcp dport 9000 → drop, tcp dport 9100 → tap0        (prio 300, `churn` only:
#                                                                 no ct, one lookup a packet)
# Phases (blocks <phase>/<what>; each has metrics-before, metrics-after and a plan or truth):
#   modify    R's datapath flow carries 40 SYNs, R becomes a drop (mod-flows --strict), the
#             revalidator modifies the same flow (same ufid) in place, 5 more SYNs are dropped
#   recreate  the +inv drop flow carries burst A, idles out (evicted), burst B re-creates it
#             with the same key; no scrape in between
#   logged    a drop that logs (controller action, no output; no controller connected)
#   churn     megaflows off, ~20,000 exact-match flows over ~60 s in alternating drop-only and
#             forward-only windows; the kernel's lookup counters at every window boundary
#   reload    ovs-vswitchd stopped, openvswitch and nf_conntrack unloaded and loaded again
#             while the exporter runs

# shellcheck source=topology.sh
. /guest/topology.sh
EXPORTER_BASE_FLAGS="--web.listen-address=127.0.0.1:9479 --collector.disable-defaults \
--collector.interfaces --collector.conntrack --collector.ovs --collector.ovs_flows"
METRICS_URL=http://127.0.0.1:9479/metrics

# Rule R (phase modify) and the logged drop (phase logged): one megaflow each, whatever the
# destination port within their /8 of ports.
R_MATCH="table=1,priority=95,ct_state=+new+trk,tcp,tp_dst=0x1400/0xff00"
R_PORT=5120
LOG_MATCH="table=1,priority=95,ct_state=+new+trk,tcp,tp_dst=0x1500/0xff00"
LOG_PORT=5376
# Phase recreate: bad-checksum SYNs (+inv) from SPORT to INV_PORT.., good keep-alive SYNs.
INV_PORT=6000
KEEPALIVE_PORT=7000
RECREATE_KEEPALIVE_S=2     # a good SYN this often while waiting for the eviction; 0: none
# Phase churn: ct-less rules in table 0.
CHURN_DROP_PORT=9000
CHURN_FWD_PORT=9100
CHURN_WINDOWS=12           # alternating drop, forward, drop, ...
CHURN_WINDOW_TUPLES=1650   # distinct 5-tuples a window (scaled down if the sender falls behind)
CHURN_PER_TICK=100         # new tuples a tick
CHURN_TICK_MS=250
CHURN_REPEAT=3             # packets a tuple, a tick apart
CHURN_BUDGET_S=80          # no window starts later than this into the phase
CHURN_SCRAPE_EVERY_S=15

# --- topology (topology.sh), flows and helpers ------------------------------------------

scenario_prepare() {
    # OVS defaults: 10 s idle timeout, so the revalidator evicts and modifies flows.
    ovs-vsctl --no-wait remove Open_vSwitch . other_config max-idle
    emit ovs-other-config ovs-vsctl --no-wait get Open_vSwitch . other_config

    topology_up

    start_exporter
}

add_flows() {
    {
        base_flows
        echo "$R_MATCH,actions=ct(commit),output:tap0"
        # What an OVN ACL with `log` and a drop verdict becomes: a controller action with
        # userdata (opcode 7 = log), no output.
        echo "$LOG_MATCH,actions=controller(userdata=00.00.00.07.00.00.00.00)"
    } >/tmp/flows.txt
    ovs-ofctl add-flows br-int /tmp/flows.txt || fatal "ovs-ofctl add-flows failed"
}

# --- helpers -------------------------------------------------------------------------

now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# scrape BLOCK: the exporter's metrics, as the seed takes them. (Busybox 1.35's wget -T
# crashes, so busybox timeout bounds it instead.)
scrape() { emit "$1" timeout 60 wget -q -O - "$METRICS_URL"; }

# dp_counters: `hit missed lost flows` of the datapath.
dp_counters() {
    ovs-dpctl show 2>/dev/null | awk '
        $1 == "lookups:" { for (i = 2; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] } }
        $1 == "flows:" { f = $2 }
        END { if (f == "") exit 1; print v["hit"], v["missed"], v["lost"], f }'
}

# dump_flows: the datapath's flows (with ufids) into /tmp/dp-flows.txt.
dump_flows() { ovs-dpctl dump-flows -m >/tmp/dp-flows.txt 2>&1; }

# flow_ufid PATTERN...: the ufid of the first dumped flow whose line holds every PATTERN.
flow_ufid() {
    _pat=$1
    shift
    grep -F -- "$_pat" /tmp/dp-flows.txt | while read -r _l; do
        _ok=1
        for _p in "$@"; do
            case $_l in *"$_p"*) ;; *) _ok=0 ;; esac
        done
        if [ $_ok = 1 ]; then
            echo "$_l" | sed -n 's/^ufid:\([^,]*\),.*/\1/p'
            break
        fi
    done
}

flow_line() { grep "^ufid:$1," /tmp/dp-flows.txt; }
flow_packets() { flow_line "$1" | sed -n 's/.* packets:\([0-9]*\),.*/\1/p'; }
flow_actions() { flow_line "$1" | sed -n 's/.* actions:\(.*\)$/\1/p'; }

# flow_has_actions UFID ACTIONS: dumps again; true when flow UFID has exactly ACTIONS.
flow_has_actions() {
    dump_flows
    [ "$(flow_actions "$1")" = "$2" ]
}

# flow_gone UFID: dumps again; true when flow UFID is no longer in the datapath.
flow_gone() {
    dump_flows || return 1
    ! grep -q "^ufid:$1," /tmp/dp-flows.txt
}

# coverage_total NAME: the total of one of ovs-vswitchd's coverage counters (0 if unseen).
coverage_total() {
    ovs-appctl coverage/show | awk -v n="$1" '$1 == n { t = $NF } END { print t + 0 }'
}

COVERAGE_NAMES="dpif_flow_put dpif_flow_del dpif_execute upcall_flow_limit_hit \
upcall_ukey_contention handler_duplicate_upcall revalidate_missed_dp_flow \
upcall_ukey_replace dumped_duplicate_flow dumped_new_flow"

# coverage_snapshot FILE: `name total` for COVERAGE_NAMES.
coverage_snapshot() {
    ovs-appctl coverage/show >/tmp/coverage.txt 2>&1
    for _n in $COVERAGE_NAMES; do
        awk -v n="$_n" '$1 == n { t = $NF } END { print n, t + 0 }' /tmp/coverage.txt
    done >"$1"
}

# softnet_dropped: packets the kernel's per-CPU backlogs dropped (softnet_stat column 2).
softnet_dropped() {
    _d=0
    while read -r _ _x _; do _d=$((_d + 0x$_x)); done </proc/net/softnet_stat
    echo "$_d"
}

dp_flow_count() { dp_counters | awk '{ print $4 }'; }
dp_empty() { [ "$(dp_flow_count)" = 0 ]; }

module_state() {
    if grep -q "^$1 " /proc/modules; then echo "$1 loaded"; else echo "$1 not loaded"; fi
}

phase_blocks() {
    emit "$1/dpctl-show" ovs-dpctl show -s
    emit "$1/openflow" ovs-ofctl dump-flows br-int
    emit "$1/conntrack-S" conntrack -S
    emit "$1/vm-reader" cat "$VM_COUNT"
    emit "$1/traffic" cat "/tmp/traffic-$1.log"
}

begin_phase() {
    phase=$1
    : >"/tmp/traffic-$phase.log"
    scrape "$phase/metrics-before"
}

# --- phases --------------------------------------------------------------------------

phase_modify() {
    begin_phase modify
    # The primer makes both datapath flows (ct + recirculation, then R's), so the counted
    # SYNs all hit R's flow: a packet handled by an upcall is never counted in one.
    tcp --dport $R_PORT --flags syn
    sleep 2
    tcp --dport $((R_PORT + 1)) --count 40 --flags syn
    expected=$((expected + 41))
    settle $expected
    dump_flows
    emit modify/dump-flows-forwarding cat /tmp/dp-flows.txt
    _ufid=$(flow_ufid "dst=$R_PORT/0xff00" "ct_state(")
    [ -n "$_ufid" ] || fatal "modify: no datapath flow for R (tcp dst $R_PORT/0xff00)"
    _fwd=$(flow_packets "$_ufid")
    _fwd_actions=$(flow_actions "$_ufid")
    emit modify/mod-flows ovs-ofctl --strict mod-flows br-int "$R_MATCH,actions=drop"
    _t0=$(now_ms)
    wait_for 15 flow_has_actions "$_ufid" drop \
        || fatal "modify: flow $_ufid did not become a drop within 15 s: $(cat /tmp/dp-flows.txt)"
    _t1=$(now_ms)
    emit modify/dump-flows-modified cat /tmp/dp-flows.txt
    _mod=$(flow_packets "$_ufid")
    tcp --dport $((R_PORT + 41)) --count 5 --flags syn
    sleep 1
    dump_flows
    emit modify/dump-flows-after cat /tmp/dp-flows.txt
    _after=$(flow_packets "$_ufid")
    note modify/plan "primer_syn 1
sent_forwarding 40
forwarded $_fwd
forwarding_actions $_fwd_actions
packets_when_modified $_mod
modified_after_ms $((_t1 - _t0))
dropped_after_change 5
packets_after $_after
ufid $_ufid
rule $R_MATCH"
    phase_blocks modify
    scrape modify/metrics-after
}

# inv_burst COUNT NAME: COUNT bad-checksum SYNs to INV_PORT, 200 ms apart, then block
# recreate/dump-flows-NAME; sets _ufid and _pkts of the +inv drop flow.
inv_burst() {
    tcp --dport $INV_PORT --count "$1" --flags syn --bad-checksum --interval-ms 200
    sleep 1
    dump_flows
    emit "recreate/dump-flows-$2" cat /tmp/dp-flows.txt
    _ufid=$(flow_ufid "ct_state(0x30/" "actions:drop")
    [ -n "$_ufid" ] || fatal "recreate: no +inv drop flow after burst $2"
    _pkts=$(flow_packets "$_ufid")
}

phase_recreate() {
    begin_phase recreate
    # Burst A: the first packet's upcalls make the flows; the others are a little apart, so
    # each finds the flow installed.
    inv_burst 7 a
    _ufid_a=$_ufid _pkts_a=$_pkts
    # Nothing reaches the +inv flow until the revalidator evicts it (10 s idle). A good SYN
    # every 2 s keeps the ct + recirculation flow of table 0 alive: if it went too, its
    # recirc_id would be freed and burst B's flow would get another recirc_id, hence
    # another key and ufid.
    _t0=$(now_ms)
    _deadline=$(($(uptime_s) + 30))
    _next_ka=0
    _ka=0
    until flow_gone "$_ufid_a"; do
        [ "$(uptime_s)" -lt "$_deadline" ] \
            || fatal "recreate: flow $_ufid_a still in the datapath after 30 s"
        if [ "$RECREATE_KEEPALIVE_S" -gt 0 ] && [ "$(now_ms)" -ge "$_next_ka" ]; then
            tcp --dport $((KEEPALIVE_PORT + _ka)) --flags syn
            _ka=$((_ka + 1))
            _next_ka=$(($(now_ms) + RECREATE_KEEPALIVE_S * 1000))
        fi
        sleep 0.5
    done
    _evicted_ms=$(($(now_ms) - _t0))
    expected=$((expected + _ka))
    emit recreate/dump-flows-evicted cat /tmp/dp-flows.txt
    # Burst B: the same first packet as burst A, so the same datapath key.
    inv_burst 5 b
    _ufid_b=$_ufid _pkts_b=$_pkts
    if [ "$_ufid_a" = "$_ufid_b" ]; then _same=yes; else _same=no; fi
    settle $expected
    note recreate/plan "a_sent 7
a_datapath_packets $_pkts_a
a_ufid $_ufid_a
evicted_after_ms $_evicted_ms
keepalive_good_syn $_ka
b_sent 5
b_datapath_packets $_pkts_b
b_ufid $_ufid_b
same_ufid $_same"
    phase_blocks recreate
    scrape recreate/metrics-after
}

phase_logged() {
    begin_phase logged
    tcp --dport $LOG_PORT --flags syn
    sleep 2
    tcp --dport $((LOG_PORT + 1)) --count 10 --flags syn
    sleep 1
    dump_flows
    emit logged/dump-flows cat /tmp/dp-flows.txt
    _ufid=$(flow_ufid "dst=$LOG_PORT/0xff00" "ct_state(")
    [ -n "$_ufid" ] || fatal "logged: no datapath flow for the logged drop"
    note logged/plan "primer_syn 1
sent 10
datapath_packets $(flow_packets "$_ufid")
ufid $_ufid
actions $(flow_actions "$_ufid")
rule $LOG_MATCH,actions=controller(userdata=00.00.00.07.00.00.00.00)"
    phase_blocks logged
    emit logged/vswitchd-log-tail sh -c 'tail -n 20 /var/log/openvswitch/ovs-vswitchd.log'
    scrape logged/metrics-after
}

# quiet_counters: waits until the datapath's lookup counters stop moving (the softirqs of
# the last packets sent have run), then prints them.
quiet_counters() {
    _prev=$(dp_counters) || fatal "ovs-dpctl show failed"
    _deadline=$(($(uptime_s) + 10))
    while :; do
        sleep 0.3
        _cur=$(dp_counters) || fatal "ovs-dpctl show failed"
        # Flow counts move with the revalidator; only the lookups must be still.
        [ "${_cur% *}" = "${_prev% *}" ] && break
        [ "$(uptime_s)" -lt "$_deadline" ] || fatal "churn: lookups still moving after 10 s"
        _prev=$_cur
    done
    echo "$_cur"
}

# shellcheck disable=SC2046 # set -- splits the four counters on purpose
phase_churn() {
    begin_phase churn
    # The outer Geneve packets go through the host's conntrack (ct() in use registers its
    # hooks) and every inner 5-tuple has its own outer source port: room for all of them.
    _ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
    sysctl -qw net.netfilter.nf_conntrack_max=262144
    emit churn/conntrack-S-before conntrack -S
    emit churn/disable-megaflows ovs-appctl upcall/disable-megaflows
    cat >/tmp/churn-flows.txt <<EOF
table=0,priority=300,tcp,tp_dst=$CHURN_DROP_PORT,actions=drop
table=0,priority=300,tcp,tp_dst=$CHURN_FWD_PORT,actions=output:tap0
EOF
    ovs-ofctl add-flows br-int /tmp/churn-flows.txt || fatal "churn: add-flows failed"
    # disable-megaflows flushes the datapath; wait until it is empty.
    wait_for 15 dp_empty || fatal "churn: datapath not empty: $(ovs-dpctl show)"
    # From an empty datapath to an empty datapath: every flow the revalidator deletes in
    # between is a churn flow it created (dpif_flow_del is exact here; the handlers' own
    # counters, dpif_flow_put, reach coverage/show up to a second late). The revalidator
    # adds its counts to the totals at most once a second, when it wakes (every 0.5 s):
    # give it that time to report the deletions of the flush.
    sleep 2
    coverage_snapshot /tmp/coverage-before.txt
    _tap_drop0=$(cat /sys/class/net/tap0/statistics/tx_dropped)
    _frames0=$(reader_frames)
    _tap_tx0=$(cat /sys/class/net/tap0/statistics/tx_packets)
    _softnet0=$(softnet_dropped)
    set -- $(quiet_counters)
    _h0=$1 _m0=$2 _l0=$3
    _start=$(now_ms)
    _last_scrape=$_start
    _n=0 _w=0 _first=0 _per_tick=$CHURN_PER_TICK _tuples=$CHURN_WINDOW_TUPLES
    _dt=0 _ft=0 _dp=0 _fp=0 _dh=0 _dm=0 _dl=0 _fh=0 _fm=0 _fl=0 _late=0 _maxflows=0
    echo "window kind tuples packets per_tick elapsed_ms late_ticks hit missed lost flows_at_end" \
        >/tmp/churn-windows.txt
    while [ $_w -lt $CHURN_WINDOWS ]; do
        [ $(($(now_ms) - _start)) -lt $((CHURN_BUDGET_S * 1000)) ] || break
        _w=$((_w + 1))
        if [ $((_w % 2)) = 1 ]; then _kind=drop _dport=$CHURN_DROP_PORT; else _kind=forward _dport=$CHURN_FWD_PORT; fi
        /sbin/ip netns exec remote /bin/pptraffic churn --src "$REMOTE_IP" --dst "$VM_IP" \
            --dport "$_dport" --tuples "$_tuples" --first "$_first" --repeat "$CHURN_REPEAT" \
            --per-tick "$_per_tick" --tick-ms "$CHURN_TICK_MS" >/tmp/churn-out.txt 2>&1 \
            || fatal "churn: pptraffic churn failed: $(cat /tmp/churn-out.txt)"
        cat /tmp/churn-out.txt >>"/tmp/traffic-$phase.log"
        _pk=$(awk '$1 == "packets" { print $2 }' /tmp/churn-out.txt)
        _el=$(awk '$1 == "elapsed_ms" { print $2 }' /tmp/churn-out.txt)
        _lt=$(awk '$1 == "late_ticks" { print $2 }' /tmp/churn-out.txt)
        set -- $(quiet_counters)
        _dh1=$(($1 - _h0)) _dm1=$(($2 - _m0)) _dl1=$(($3 - _l0))
        _h0=$1 _m0=$2 _l0=$3
        [ "$4" -gt "$_maxflows" ] && _maxflows=$4
        echo "$_w $_kind $_tuples $_pk $_per_tick $_el $_lt $_dh1 $_dm1 $_dl1 $4" \
            >>/tmp/churn-windows.txt
        _first=$((_first + _tuples))
        _late=$((_late + _lt))
        if [ $_kind = drop ]; then
            _dt=$((_dt + _tuples)) _dp=$((_dp + _pk))
            _dh=$((_dh + _dh1)) _dm=$((_dm + _dm1)) _dl=$((_dl + _dl1))
        else
            _ft=$((_ft + _tuples)) _fp=$((_fp + _pk))
            _fh=$((_fh + _dh1)) _fm=$((_fm + _dm1)) _fl=$((_fl + _dl1))
        fi
        # A sender that cannot keep its ticks makes windows long: fewer tuples a tick.
        _planned=$(((_tuples + _per_tick - 1) / _per_tick + CHURN_REPEAT - 1))
        _planned=$((_planned * CHURN_TICK_MS))
        if [ "$_el" -gt $((_planned * 14 / 10)) ] && [ "$_per_tick" -gt 10 ]; then
            _per_tick=$((_per_tick / 2))
            _tuples=$((_tuples / 2))
        fi
        if [ $(($(now_ms) - _last_scrape)) -ge $((CHURN_SCRAPE_EVERY_S * 1000)) ]; then
            _n=$((_n + 1))
            _t=$(now_ms)
            scrape "churn/metrics-$_n"
            note "churn/metrics-$_n-at" "after_window $_w
phase_ms $((_t - _start))
scrape_ms $(($(now_ms) - _t))
counters $(dp_counters)"
            _last_scrape=$(now_ms)
            # The scrape's time is nobody's traffic: start the next window from still counters.
            set -- $(quiet_counters)
            [ "$1 $2 $3" = "$_h0 $_m0 $_l0" ] \
                || fatal "churn: lookups moved during a scrape: $_h0 $_m0 $_l0 -> $*"
        fi
    done
    _sent_ms=$(($(now_ms) - _start))
    emit churn/windows cat /tmp/churn-windows.txt
    emit churn/dpctl-show-end ovs-dpctl show -s
    emit churn/upcall-show ovs-appctl upcall/show
    _frames1=$(reader_frames)
    _tap_tx1=$(cat /sys/class/net/tap0/statistics/tx_packets)
    _tap_drop1=$(cat /sys/class/net/tap0/statistics/tx_dropped)
    # Every churn flow idles out (10 s) and the revalidator deletes it.
    _t0=$(now_ms)
    wait_for 60 dp_empty \
        || fatal "churn: $(dp_flow_count) flows still in the datapath 60 s after the traffic"
    _evict_ms=$(($(now_ms) - _t0))
    set -- $(dp_counters)
    [ "$1 $2 $3" = "$_h0 $_m0 $_l0" ] || fatal "churn: lookups moved while idle: $_h0 $_m0 $_l0 -> $*"
    # Again time for the revalidator to report its last deletions.
    sleep 2
    coverage_snapshot /tmp/coverage-after.txt
    emit churn/dpctl-show-evicted ovs-dpctl show -s
    emit churn/conntrack-S-after conntrack -S
    scrape churn/metrics-after
    # shellcheck disable=SC2016 # awk's own variables
    _cov=$(awk 'NR == FNR { b[$1] = $2; next } { print "coverage_" $1, $2 - b[$1] }' \
        /tmp/coverage-before.txt /tmp/coverage-after.txt)
    _created=$(echo "$_cov" | awk '$1 == "coverage_dpif_flow_del" { print $2 }')
    _secs=$((_sent_ms / 1000))
    [ "$_secs" -gt 0 ] || _secs=1
    note churn/truth "windows $_w
window_tuples_start $CHURN_WINDOW_TUPLES
per_tick_start $CHURN_PER_TICK
tick_ms $CHURN_TICK_MS
repeat $CHURN_REPEAT
drop_tuples $_dt
forward_tuples $_ft
drop_packets_sent $_dp
forward_packets_sent $_fp
drop_window_hits $_dh
drop_window_missed $_dm
drop_window_lost $_dl
forward_window_hits $_fh
forward_window_missed $_fm
forward_window_lost $_fl
flows_created $_created
max_flows_at_boundary $_maxflows
late_ticks $_late
send_ms $_sent_ms
packets_per_s $(((_dp + _fp) / _secs))
tuples_per_s $(((_dt + _ft) / _secs))
evicted_after_ms $_evict_ms
vm_frames $((_frames1 - _frames0))
tap0_tx_packets $((_tap_tx1 - _tap_tx0))
tap0_tx_dropped $((_tap_drop1 - _tap_drop0))
softnet_dropped $(($(softnet_dropped) - _softnet0))
nf_conntrack_max_default $_ct_max
$_cov"
    emit churn/enable-megaflows ovs-appctl upcall/enable-megaflows
    ovs-ofctl del-flows br-int "table=0,tcp,tp_dst=$CHURN_DROP_PORT" || true
    ovs-ofctl del-flows br-int "table=0,tcp,tp_dst=$CHURN_FWD_PORT" || true
    emit churn/traffic cat "/tmp/traffic-$phase.log"
    emit churn/vm-reader cat "$VM_COUNT"
    # The forward windows' frames count as delivered from here on.
    expected=$(reader_frames)
}

CONNTRACK_MODULES="nf_conncount nf_nat nf_conntrack_netlink nf_conntrack nf_defrag_ipv6 \
nf_defrag_ipv4"

modules_state() {
    for _m in openvswitch $CONNTRACK_MODULES; do module_state "$_m"; done
}

phase_reload() {
    begin_phase reload
    emit reload/lsmod-before lsmod
    emit reload/conntrack-S-before conntrack -S
    emit reload/vswitchd-exit ovs-appctl -t ovs-vswitchd exit
    wait_for 10 sh -c '! pidof ovs-vswitchd' || fatal "reload: ovs-vswitchd did not exit"
    emit reload/del-dp ovs-dpctl del-dp ovs-system
    # A genl family or nfnetlink subsystem lookup makes the kernel run modprobe: no module
    # may come back on its own while this phase looks at the unloaded state.
    _modprobe=$(cat /proc/sys/kernel/modprobe)
    echo >/proc/sys/kernel/modprobe
    # shellcheck disable=SC2016 # expanded by the inner shell
    emit reload/rmmod sh -c '
        for m in vport_geneve vport_vxlan vport_gre openvswitch '"$CONNTRACK_MODULES"'; do
            grep -q "^$m " /proc/modules || continue
            echo "rmmod $m"
            rmmod "$m" || echo "rmmod $m failed"
        done'
    emit reload/lsmod-unloaded lsmod
    grep -q '^nf_conntrack ' /proc/modules && fatal "reload: nf_conntrack still loaded: $(lsmod)"
    grep -q '^openvswitch ' /proc/modules && fatal "reload: openvswitch still loaded: $(lsmod)"
    emit reload/conntrack-S-unloaded conntrack -S
    scrape reload/metrics-unloaded
    emit reload/modules-after-scrape modules_state
    echo "$_modprobe" >/proc/sys/kernel/modprobe
    # With modprobe allowed again, a scrape must still load nothing: the collectors look
    # before they ask (conntrack at /proc/net/stat/nf_conntrack, OVS by a family dump).
    scrape reload/metrics-autoload
    emit reload/modules-autoload modules_state

    modprobe nf_conntrack_netlink || fatal "reload: modprobe nf_conntrack_netlink failed"
    modprobe openvswitch || fatal "reload: modprobe openvswitch failed"
    emit reload/lsmod-reloaded lsmod
    ovs_start_switch reload/vswitchd-start
    wait_for 30 ports_attached || fatal "reload: ports not back in the datapath: $(ovs-dpctl show 2>&1)"
    base_flows >/tmp/flows.txt
    ovs-ofctl add-flows br-int /tmp/flows.txt || fatal "reload: add-flows failed"
    tcp --dport 8000 --flags syn
    tcp --dport 8100 --flags syn --bad-checksum
    sleep 2
    tcp --dport 8001 --count 5 --flags syn
    tcp --dport 8101 --count 3 --flags syn --bad-checksum
    expected=$((expected + 6))
    settle $expected
    dump_flows
    emit reload/dump-flows cat /tmp/dp-flows.txt
    note reload/plan "prime_good_syn 1
prime_bad_syn 1
good_syn 5
bad_syn 3
nf_conntrack_checksum $(cat /proc/sys/net/netfilter/nf_conntrack_checksum)"
    phase_blocks reload
    emit reload/lsmod-after lsmod
    scrape reload/metrics-after
}

scenario_run() {
    wait_for 30 ports_attached || fatal "ports not in the datapath: $(ovs-dpctl show 2>&1)"
    add_flows
    expected=0 # frames the VM has read, in all
    # Shell variables are global: these two are used by nothing else.
    for _phase_name in modify recreate logged churn reload; do
        _phase_t0=$(now_ms)
        "phase_$_phase_name"
        note "$_phase_name/timing" "start_uptime_ms $_phase_t0
duration_ms $(($(now_ms) - _phase_t0))"
    done
    emit exporter-log cat "$EXPORTER_LOG"
}
