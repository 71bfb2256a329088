#!/usr/bin/env bash
# The ovsdb collector's cost: scrape time and memory of the exporter with 2,000 VM ports in
# a private ovsdb-server, against the same exporter without the collector, in the same run;
# then resident memory while 1,000 ports are added and deleted.
#
# usage: bench/ovsdb-ports.sh        (needs ovsdb-server from openvswitch-switch, curl)
# Env: N (scrapes each, default 50), PORTS (default 2000), CHURN (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50} PORTS=${PORTS:-2000} CHURN=${CHURN:-1000}
cargo build --release --quiet
bin=target/release/packetpath-exporter
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -f "$dir/ovsdb.pid" ]; then kill "$(cat "$dir/ovsdb.pid")" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

ovsdb-tool create "$dir/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" --pidfile="$dir/ovsdb.pid" \
    --log-file="$dir/ovsdb.log" --unixctl="$dir/ovsdb.ctl" --no-chdir --detach
vsctl() { ovs-vsctl --db="unix:$dir/db.sock" --no-wait "$@"; }
vsctl init
vsctl add-br br-int
# add_ports FIRST COUNT: one transaction, os-vif's external_ids.
add_ports() {
    local args=() i
    for ((i = $1; i < $1 + $2; i++)); do
        args+=(-- add-port br-int "tap$i" -- set Interface "tap$i"
            "external_ids:iface-id=port-$i" "external_ids:vm-uuid=vm-$i"
            "external_ids:attached-mac=fa:16:3e:00:00:01" external_ids:iface-status=active)
    done
    vsctl "${args[@]}"
}
del_ports() {
    local args=() i
    for ((i = $1; i < $1 + $2; i++)); do args+=(-- del-port br-int "tap$i"); done
    vsctl "${args[@]}"
}
add_ports 0 "$PORTS"

start() { # PORT FLAGS...
    local port=$1
    shift
    "$bin" --web.listen-address="127.0.0.1:$port" "$@" 2>"$dir/exporter-$port.log" &
    pids+=($!)
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/-/healthy" >/dev/null && return; sleep 0.1; done
    echo "exporter on $port did not start" >&2
    exit 1
}
start 19710 --collector.ovsdb.socket="$dir/db.sock"
with=${pids[-1]}
start 19711 --no-collector.ovsdb
without=${pids[-1]}
synced() { [[ $(curl -s http://127.0.0.1:19710/metrics) == *'collector_success{collector="ovsdb"} 1'* ]]; }
until synced; do sleep 0.2; done

scrape() { curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$1/metrics"; }
for _ in 1 2 3; do scrape 19710 >/dev/null; scrape 19711 >/dev/null; done
: >"$dir/t-with"; : >"$dir/t-without"
for _ in $(seq "$N"); do
    scrape 19710 >>"$dir/t-with"
    scrape 19711 >>"$dir/t-without"
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { printf "%.2f", a[int((NR + 1) / 2)] * 1000 }'; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
series() { curl -s "http://127.0.0.1:$1/metrics" | grep -vc '^#'; }
echo "ports $PORTS scrapes $N each, alternating"
printf '%-22s %12s %8s %12s %12s\n' exporter "median ms" series "VmRSS KiB" "VmHWM KiB"
printf '%-22s %12s %8s %12s %12s\n' "with ovsdb ($PORTS)" "$(median "$dir/t-with")" \
    "$(series 19710)" "$(kib "$with" VmRSS)" "$(kib "$with" VmHWM)"
printf '%-22s %12s %8s %12s %12s\n' "without ovsdb" "$(median "$dir/t-without")" \
    "$(series 19711)" "$(kib "$without" VmRSS)" "$(kib "$without" VmHWM)"

# Churn: CHURN ports added and deleted in batches of 100 while scraping.
echo "churn: $CHURN ports added and deleted in batches of 100"
echo "round ports_seen VmRSS_KiB"
start_at=$PORTS
for ((r = 0; r < CHURN / 100; r++)); do
    add_ports "$((start_at + r * 100))" 100
    scrape 19710 >/dev/null
    del_ports "$((start_at + r * 100))" 100
    sleep 0.3
    seen=$(curl -s http://127.0.0.1:19710/metrics | awk '$1 == "packetpath_vm_ports" { print $2 }')
    echo "$((r + 1)) $seen $(kib "$with" VmRSS)"
done
