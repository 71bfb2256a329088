# shellcheck shell=sh disable=SC2034 # variables here are for the scenarios that source it
# The bed's topology and the helpers every scenario uses (busybox sh; sourced by a
# scenario, after lib.sh):
#
#   netns remote                         root netns: the compute host
#   gnv1 (kernel geneve, vni 100)        br-int (fail-mode=secure)
#   10.0.0.1 ──── ul1 ═══ veth ═══ ul0 ──── genev_sys_6081 (port gnv0) ── tap0 ── "VM"
#                 192.168.100.1     192.168.100.2                            10.0.0.2
#
# The scenario sets EXPORTER_BASE_FLAGS before calling start_exporter.

REMOTE_IP=10.0.0.1
VM_IP=10.0.0.2
VM_MAC=02:00:00:00:00:02
GNV1_MAC=02:00:00:00:00:01
UL_HOST=192.168.100.2
UL_HOST_MAC=02:00:00:00:01:02
UL_REMOTE=192.168.100.1
UL_REMOTE_MAC=02:00:00:00:01:01
SPORT=40000
# The VM's Neutron port and instance (os-vif's external_ids on tap0).
VM_PORT_ID=519d7cc4-7593-4944-af80-6a8a9b4f4e9a
VM_UUID=0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f

# underlay_up HOST_IP REMOTE_IP: netns remote (IPv6 off, lo up) and a veth pair to it,
# ul0 here (HOST_IP/24, $UL_HOST_MAC) and ul1 there (REMOTE_IP/24, $UL_REMOTE_MAC), each
# side's neighbour fixed so no ARP is ever sent.
underlay_up() {
    /sbin/ip netns add remote
    /sbin/ip netns exec remote sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
        net.ipv6.conf.default.disable_ipv6=1
    /sbin/ip -n remote link set lo up
    /sbin/ip link add ul0 address "$UL_HOST_MAC" type veth \
        peer name ul1 address "$UL_REMOTE_MAC" netns remote
    /sbin/ip addr add "$1/24" dev ul0
    /sbin/ip link set ul0 up
    /sbin/ip neigh replace "$2" lladdr "$UL_REMOTE_MAC" dev ul0 nud permanent
    /sbin/ip -n remote addr add "$2/24" dev ul1
    /sbin/ip -n remote link set ul1 up
    /sbin/ip -n remote neigh replace "$1" lladdr "$UL_HOST_MAC" dev ul1 nud permanent
}

# topology_up: both namespaces, the underlay, the remote geneve device, the VM's TAP held
# by a pptraffic tap-reader, and br-int with its geneve and TAP ports (in the database;
# ovs-vswitchd creates them when it starts).
topology_up() {
    # Underlay: a veth pair between the namespaces, neighbours fixed so no ARP is ever sent.
    underlay_up "$UL_HOST" "$UL_REMOTE"

    # The other hypervisor: a plain kernel geneve device.
    /sbin/ip -n remote link add gnv1 address "$GNV1_MAC" type geneve id 100 remote "$UL_HOST"
    /sbin/ip -n remote addr add "$REMOTE_IP/24" dev gnv1
    /sbin/ip -n remote link set gnv1 up
    /sbin/ip -n remote neigh replace "$VM_IP" lladdr "$VM_MAC" dev gnv1 nud permanent

    # The VM: tap0 exists while the reader holds it open.
    /bin/pptraffic tap-reader --dev tap0 --count-file "$VM_COUNT" 2>/tmp/vm-reader.err &
    wait_for 10 test -s "$VM_COUNT" || fatal "tap reader did not start: $(cat /tmp/vm-reader.err)"
    /sbin/ip link set tap0 up

    # The bridge is in the database before ovs-vswitchd starts, as on a host that reboots;
    # ovs-vswitchd creates the datapath, genev_sys_6081 and the ports when it comes up.
    ovs-vsctl --no-wait add-br br-int -- set bridge br-int fail-mode=secure
    ovs-vsctl --no-wait add-port br-int gnv0 -- set interface gnv0 type=geneve \
        options:remote_ip="$UL_REMOTE" options:key=100
    # The VM's identity as os-vif writes it when Nova plugs the port.
    ovs-vsctl --no-wait add-port br-int tap0 -- set Interface tap0 \
        external_ids:iface-id="$VM_PORT_ID" external_ids:vm-uuid="$VM_UUID" \
        external_ids:attached-mac="$VM_MAC" external_ids:iface-status=active
    # The port's conntrack zone as ovn-controller records it: the seed's ct() runs in
    # zone 0, so drops after its recirculation are the VM's (drop attribution).
    ovs-vsctl --no-wait set Bridge br-int external_ids:ct-zone-"$VM_PORT_ID"=0
}

# Starts the exporter in the root netns with the base flags plus $PP_EXPORTER_FLAGS. If it
# exits at once (an unknown flag, say), block exporter-start-failed says so and the base
# flags are tried alone; block exporter-start tells how it finally runs.
start_exporter() {
    _flags="$EXPORTER_BASE_FLAGS $PP_EXPORTER_FLAGS"
    # shellcheck disable=SC2086 # the flags are meant to split
    /bin/packetpath-exporter $_flags 2>>"$EXPORTER_LOG" &
    EXPORTER_PID=$!
    _deadline=$(($(uptime_s) + 15))
    while kill -0 "$EXPORTER_PID" 2>/dev/null; do
        if wget -q -O /dev/null http://127.0.0.1:9479/-/healthy 2>/dev/null; then
            note exporter-start "serving, pid $EXPORTER_PID, flags: $_flags"
            return 0
        fi
        if [ "$(uptime_s)" -ge "$_deadline" ]; then
            note exporter-start "running but not answering after 15 s, flags: $_flags"
            return 0
        fi
        sleep 0.2
    done
    _rc=0
    wait "$EXPORTER_PID" || _rc=$?
    if [ -z "$PP_EXPORTER_FLAGS" ]; then
        note exporter-start "exited with status $_rc at start, flags: $_flags
$(cat "$EXPORTER_LOG")"
        return 0
    fi
    note exporter-start-failed "exited with status $_rc at start, flags: $_flags
$(cat "$EXPORTER_LOG")"
    PP_EXPORTER_FLAGS=""
    echo "--- restarted without PP_EXPORTER_FLAGS" >>"$EXPORTER_LOG"
    start_exporter
}

ports_attached() {
    _ports=$(ovs-dpctl show) || return 1
    case $_ports in *genev_sys_6081*) ;; *) return 1 ;; esac
    case $_ports in *tap0*) ;; *) return 1 ;; esac
}

# The seed's pipeline: table 0 sends IP through conntrack, table 1 drops +inv and delivers
# +new/+est to tap0.
base_flows() {
    cat <<EOF
table=0,priority=100,ip,actions=ct(table=1)
table=1,priority=100,ct_state=+trk+inv,actions=drop
table=1,priority=90,ct_state=+trk+new,ip,actions=ct(commit),output:tap0
table=1,priority=90,ct_state=+trk+est,ip,actions=output:tap0
EOF
}

# tcp ARGS...: segments from the remote hypervisor to the VM, logged for the phase's block
# ($phase is the scenario's).
# shellcheck disable=SC2154
tcp() {
    /sbin/ip netns exec remote /bin/pptraffic tcp --src "$REMOTE_IP" --dst "$VM_IP" \
        --sport "$SPORT" "$@" >>"/tmp/traffic-$phase.log" 2>&1 \
        || fatal "pptraffic tcp $* failed: $(tail -n 3 "/tmp/traffic-$phase.log")"
}

reader_frames() { awk '$1 == "frames" { print $2 }' "$VM_COUNT"; }
reader_at_least() { [ "$(reader_frames)" -ge "$1" ]; }

# settle FRAMES: waits until the VM has read FRAMES frames in all (the forwarded packets
# are delivered), then a little longer for drops, which leave nothing to wait for.
settle() {
    wait_for 15 reader_at_least "$1" \
        || fatal "the VM read $(reader_frames) frames, expected $1 within 15 s"
    sleep 1
}
