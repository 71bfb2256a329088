# shellcheck shell=sh
# Load for the ovs_flows benchmark (bench/ovs-flows-vm.sh; sourced by /init; busybox sh).
#
# A datapath of its own, `bench`, filled with exact-match flows by `pptraffic flows` (half
# of them drops), first 10,000 then 100,000. At each size the exporter (ovs_flows only)
# is scraped three times and `ovs-dpctl dump-flows` is run three times under
# `pptraffic measure`; blocks carry the collector's duration, the exporter's peak RSS, and
# ovs-dpctl's wall time and peak RSS.

scenario_prepare() {
    # /init waits for ovs-vswitchd's handler threads, which it starts for a bridge.
    ovs-vsctl --no-wait add-br br-bench
}

bench_exporter_up() {
    /bin/packetpath-exporter --web.listen-address=127.0.0.1:9479 --collector.disable-defaults \
        --collector.ovs_flows --collector.ovs_flows.max-flows=1000000 --scrape.timeout=5m \
        2>>"$EXPORTER_LOG" &
    EXPORTER_PID=$!
    wait_for 30 wget -q -O /dev/null http://127.0.0.1:9479/-/healthy || fatal "exporter did not start"
}

bench_size() {
    emit "$1/dpctl-show" ovs-dpctl show system@bench
    for i in 1 2 3; do
        # shellcheck disable=SC2016 # expanded by the inner shell
        emit "$1/scrape$i" sh -c 'wget -q -O - http://127.0.0.1:9479/metrics |
            grep -E "^packetpath_(scrape_collector_(duration_seconds|success)|ovs_datapath_flows_by_action|ovs_flows_dump_truncated)"'
    done
    emit "$1/exporter-status" grep -E "^Vm(HWM|RSS)" "/proc/$EXPORTER_PID/status"
    for i in 1 2 3; do
        emit "$1/dpctl$i" /bin/pptraffic measure ovs-dpctl dump-flows system@bench
    done
}

scenario_run() {
    # ovs-vswitchd's revalidators delete datapath flows they did not install.
    emit vswitchd-exit ovs-appctl -t ovs-vswitchd exit
    wait_for 10 sh -c '! pidof ovs-vswitchd' || fatal "ovs-vswitchd did not exit"
    emit add-dp ovs-dpctl add-dp bench
    bench_exporter_up
    emit flows10k/install /bin/pptraffic flows --dp bench --count 10000
    bench_size flows10k
    emit flows100k/install /bin/pptraffic flows --dp bench --count 90000 --start 10000
    bench_size flows100k
    emit exporter-log cat "$EXPORTER_LOG"
}
