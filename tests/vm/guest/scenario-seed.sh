# shellcheck shell=sh
# The seed incident on a real OVS kernel datapath (sourced by /init; busybox sh).
#
#   netns remote                         root netns: the compute host
#   gnv1 (kernel geneve, vni 100)        br-int (fail-mode=secure)
#   10.0.0.1 ──── ul1 ═══ veth ═══ ul0 ──── genev_sys_6081 (port gnv0) ── ct ── tap0 ── "VM"
#                 192.168.100.1     192.168.100.2                              10.0.0.2
#
# OpenFlow: table 0 sends IP through conntrack, table 1 drops +inv and delivers +new/+est to
# tap0, which a pptraffic tap-reader holds open and counts frames on. TCP segments come from
# `remote` with known counts; every phase ends with a snapshot of the exporter and of the
# kernel's own counters. Phases:
#   checksum1  nf_conntrack_checksum=1: bad-checksum SYNs and short FIN/ACKs are invalid, dropped
#   checksum0  nf_conntrack_checksum=0: bad-checksum SYNs become +new and reach the VM (FIN/ACKs
#              of no connection stay invalid by state whatever the sysctl, so none are sent)
#   fault      ovs-vswitchd stopped, datapath deleted, openvswitch unloaded; a few SYNs
#              still arrive from the tunnel
#   recovered  module and daemon back, flows re-added, checksum=1 again
#   diagnose   `packetpath-exporter diagnose` while 5 short bad-checksum FIN/ACKs arrive

# shellcheck source=topology.sh
. /guest/topology.sh
EXPORTER_BASE_FLAGS="--web.listen-address=127.0.0.1:9479 --collector.disable-defaults \
--collector.interfaces --collector.conntrack --collector.ovsdb"

scenario_prepare() {
    topology_up
    start_exporter
}

add_flows() {
    base_flows >/tmp/flows.txt
    ovs-ofctl add-flows br-int /tmp/flows.txt
}

# prime PORT: one good and one bad SYN, so the datapath flows exist before the counted batch
# (a packet handled by an upcall is never counted in a datapath flow), then time for the
# handler threads to install them. FIN/ACKs need no primer of their own: the megaflow of
# the +inv drop wildcards the TCP flags, so a primed FIN/ACK would be counted or not
# depending on whether the SYN's flow was in place yet.
prime() {
    tcp --dport "$1" --flags syn
    tcp --dport $(($1 + 1)) --flags syn --bad-checksum
    sleep 2
}

module_state() {
    if grep -q "^$1 " /proc/modules; then echo "$1 loaded"; else echo "$1 not loaded"; fi
}

snapshot() {
    emit "$1/metrics" wget -q -O - http://127.0.0.1:9479/metrics
    emit "$1/dpctl-show" ovs-dpctl show -s
    emit "$1/dump-flows" ovs-dpctl dump-flows -m
    emit "$1/openflow" ovs-ofctl dump-flows br-int
    emit "$1/conntrack-S" conntrack -S
    emit "$1/sysfs" sysfs_stats
    emit "$1/vm-reader" cat "$VM_COUNT"
    emit "$1/lsmod" lsmod
    emit "$1/traffic" cat "/tmp/traffic-$1.log"
    emit "$1/exporter-log" cat "$EXPORTER_LOG"
}

# capture: a second exporter saves every netlink reply it gets in one scrape; each file
# comes back as block capture/<file> (od hex), with the kernel tools' view of the same
# moment, to become the parser fixtures under tests/fixtures/ovs.
capture() {
    mkdir -p /tmp/capture
    /bin/packetpath-exporter --web.listen-address=127.0.0.1:9480 \
        --debug.netlink-capture-dir=/tmp/capture 2>/tmp/capture.log &
    _pid=$!
    wait_for 15 wget -q -O /dev/null http://127.0.0.1:9480/-/healthy || fatal "capture exporter did not start"
    emit capture-metrics wget -q -O - http://127.0.0.1:9480/metrics
    kill "$_pid"
    wait "$_pid" || true
    emit capture-dpctl-show ovs-dpctl show -s
    emit capture-dump-flows ovs-dpctl dump-flows -m
    emit capture-conntrack-S conntrack -S
    for _f in /tmp/capture/*.bin; do
        emit "capture/${_f##*/}" od -An -v -tx1 "$_f"
    done
    # The procfs files the conntrack collector reads, at the same moment, so the fixture
    # is one machine's view (block capture-proc/<path under /proc>).
    for _f in /proc/net/stat/nf_conntrack /proc/sys/net/netfilter/nf_conntrack_buckets \
        /proc/sys/net/netfilter/nf_conntrack_checksum /proc/sys/net/netfilter/nf_conntrack_count \
        /proc/sys/net/netfilter/nf_conntrack_log_invalid /proc/sys/net/netfilter/nf_conntrack_max \
        /proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal /proc/sys/net/netfilter/nf_conntrack_tcp_loose; do
        emit "capture-proc/${_f#/proc/}" cat "$_f"
    done
}

scenario_run() {
    wait_for 30 ports_attached || fatal "ports not in the datapath: $(ovs-dpctl show 2>&1)"
    add_flows
    expected=0 # frames the VM has read, in all

    phase=checksum1
    : >"/tmp/traffic-$phase.log"
    sysctl -qw net.netfilter.nf_conntrack_checksum=1
    prime 1000
    expected=$((expected + 1))
    tcp --dport 2000 --count 20 --flags syn
    tcp --dport 3000 --count 6 --flags syn --bad-checksum
    tcp --dport 4000 --count 6 --flags finack --bad-checksum
    expected=$((expected + 20))
    settle $expected
    note $phase/plan "nf_conntrack_checksum 1
prime_good_syn 1
prime_bad_syn 1
good_syn 20
bad_syn 6
bad_finack 6
bad 12
good 20"
    snapshot $phase
    capture

    phase=checksum0
    : >"/tmp/traffic-$phase.log"
    sysctl -qw net.netfilter.nf_conntrack_checksum=0
    tcp --dport 5000 --count 10 --flags syn
    tcp --dport 6000 --count 8 --flags syn --bad-checksum
    expected=$((expected + 18))
    settle $expected
    note $phase/plan "nf_conntrack_checksum 0
good_syn 10
bad_syn 8
bad_finack 0
bad 8
good 10"
    snapshot $phase

    phase=fault
    : >"/tmp/traffic-$phase.log"
    # What `ovs-ctl force-reload-kmod` does on a package upgrade: stop ovs-vswitchd, delete
    # the datapath (every port holds a reference on the module) and unload the module.
    emit $phase/vswitchd-exit ovs-appctl -t ovs-vswitchd exit
    wait_for 10 sh -c '! pidof ovs-vswitchd' || fatal "ovs-vswitchd did not exit"
    emit $phase/del-dp ovs-dpctl del-dp ovs-system
    # vport-* modules (unused with OVS 3.1's genev_sys_* devices) would pin openvswitch.
    for m in vport_geneve vport_vxlan vport_gre; do
        if grep -q "^$m " /proc/modules; then rmmod "$m"; fi
    done
    # Looking up a generic netlink family the kernel lacks makes it run modprobe for it, so
    # ovs-dpctl in the snapshot would load openvswitch again: keep modules out meanwhile.
    modprobe_path=$(cat /proc/sys/kernel/modprobe)
    echo >/proc/sys/kernel/modprobe
    emit $phase/rmmod rmmod openvswitch
    # Traffic still arrives from the tunnel and goes nowhere: tunnel receive rises, TAP
    # transmit does not.
    tcp --dport 6500 --count 3 --flags syn
    sleep 2
    note $phase/plan "openvswitch_loaded 0
vswitchd_running 0
nf_conntrack_checksum 0
good_syn 3
bad_syn 0
bad_finack 0
bad 0
good 3"
    snapshot $phase
    # Whether a scrape alone loads the module again, when the kernel is allowed to.
    echo "$modprobe_path" >/proc/sys/kernel/modprobe
    emit $phase/metrics-autoload wget -q -O - http://127.0.0.1:9479/metrics
    emit $phase/autoload module_state openvswitch

    phase=recovered
    : >"/tmp/traffic-$phase.log"
    modprobe openvswitch
    ovs_start_switch $phase/vswitchd-start
    wait_for 30 ports_attached || fatal "ports not back in the datapath: $(ovs-dpctl show 2>&1)"
    # OpenFlow flows live in ovs-vswitchd only; the database brought back bridge and ports.
    add_flows
    sysctl -qw net.netfilter.nf_conntrack_checksum=1
    prime 1100
    expected=$((expected + 1))
    tcp --dport 7000 --count 5 --flags syn
    tcp --dport 7100 --count 2 --flags syn --bad-checksum
    tcp --dport 7200 --count 2 --flags finack --bad-checksum
    expected=$((expected + 5))
    settle $expected
    note $phase/plan "nf_conntrack_checksum 1
prime_good_syn 1
prime_bad_syn 1
good_syn 5
bad_syn 2
bad_finack 2
bad 4
good 5"
    snapshot $phase

    # diagnose: the one command an engineer runs on the node, while the seed's short
    # FIN/ACKs arrive during its interval. The exporter above owns NFLOG group 0, so
    # diagnose uses that exporter's classification. A primer first, so the +inv drop
    # megaflow is in place and counts every packet of the batch.
    phase=diagnose
    : >"/tmp/traffic-$phase.log"
    tcp --dport 7300 --flags finack --bad-checksum
    sleep 2
    # The status goes through a file (and an && || list, which set -e leaves alone).
    (
        /bin/packetpath-exporter diagnose --interval 8s >/tmp/diagnose.out 2>&1 &&
            echo 0 >/tmp/diagnose.rc || echo $? >/tmp/diagnose.rc
    ) &
    _pid=$!
    sleep 3
    tcp --dport 7400 --count 5 --flags finack --bad-checksum
    wait "$_pid" || true
    emit $phase/output cat /tmp/diagnose.out
    emit $phase/status cat /tmp/diagnose.rc
}
