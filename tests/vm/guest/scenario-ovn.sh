# shellcheck shell=sh
# The seed incident on a real OVN chassis (sourced by /init; busybox sh; release trixie:
# Linux 6.12, OVS 3.5, OVN 25.03). No OpenFlow is written here: ovn-controller programs
# br-int from a logical switch that ovn-northd compiles.
#
#   netns remote: the faked chassis ch2           root netns: chassis ch1
#   gnv1 (geneve, external: metadata mode)         NB + SB ovsdb-servers, ovn-northd,
#   10.0.0.1  ── ul1 ═══ veth ═══ ul0 ──            ovn-controller, br-int
#   port "remote"   192.168.100.1   192.168.100.2   genev_sys_6081 ─ ct(zone) ─┬─ tap A  10.0.0.11
#                                                                          └─ tap B  10.0.0.12
#
# A and B are Neutron-like VM ports (iface-id = the port's UUID, attached-mac, vm-uuid,
# iface-status as os-vif writes them) in one security group: an allow-related to-lport ACL
# for TCP and a lower-priority drop ACL, so OVN's egress pipeline sends what comes from
# the tunnel through ct(zone=<port's zone>),recirc and drops ct.inv. The remote port is
# bound to ch2 (`ovn-sbctl chassis-add` + `lsp-bind`); gnv1 sends to each VM through a
# route carrying OVN's Geneve option (class 0x0102, type 0x80: ingress key << 16 | egress
# key) and the datapath's tunnel key as VNI.
#
# Traffic until the host says stop (a connection to guest port 9471) or PP_OVN_TRAFFIC_S:
#   A: one short FIN/ACK with a bad TCP checksum a minute (nf_conntrack_checksum=1), inside
#      a connection established just before (SYN; A's tap-reader answers SYN/ACK, which
#      leaves through the tunnel; ACK): conntrack marks it invalid, OVN drops ct.inv.
#   B: a good SYN every 5 s (new connections, delivered) and a late RST (no connection:
#      invalid) every 10/3 s, 0.3/s: a healthy node's background.
# OVS keeps its defaults (10 s max-idle), so A's drop megaflow idles out between packets.
#
# The exporter runs with the DaemonSet's own container args (PP_EXPORTER_ARGS, written by
# the host from deploy/kubernetes/daemonset.yaml) plus PP_EXPORTER_FLAGS, listening on
# every address: the host's Prometheus scrapes it through qemu's user network (eth0, not
# in OVS). Busybox httpd on port 9470 serves /progress (what was sent, guest uptime).

# shellcheck source=topology.sh
. /guest/topology.sh

CH1_IP=192.168.100.2
CH2_IP=192.168.100.1
LS=neutron-6f1e0c2a-4b7d-4e59-8a21-0c9d8e7f6a5b
SG_PG=pg_1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d
REMOTE_PORT=5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d
# VM A: the victim; VM B: the neighbour with a healthy background.
A_PORT=3f1c2a6e-8b1d-4c3a-9e55-1a2b3c4d5e01
A_VM=a1a1a1a1-0000-4000-8000-00000000000a
A_TAP=tap3f1c2a6e-8b
A_MAC=fa:16:3e:00:00:0a
A_IP=10.0.0.11
B_PORT=7d2e4b10-5c6d-4e7f-8a9b-0c1d2e3f4a5b
B_VM=b2b2b2b2-0000-4000-8000-00000000000b
B_TAP=tap7d2e4b10-5c
B_MAC=fa:16:3e:00:00:0b
B_IP=10.0.0.12

OVN_RUN=/run/ovn
NB=unix:$OVN_RUN/ovnnb_db.sock
SB=unix:$OVN_RUN/ovnsb_db.sock
nbctl() { ovn-nbctl --db="$NB" "$@"; }
sbctl() { ovn-sbctl --db="$SB" "$@"; }

PROGRESS=/tmp/www/progress
STOP=/tmp/stop
TRAFFIC_S=${PP_OVN_TRAFFIC_S:-660}
# The DaemonSet's args as the host adapted them (run.sh's default: the exporter's own).
EXPORTER_BASE_FLAGS=${PP_EXPORTER_ARGS:---web.listen-address=:9479}

# ovn_central: both databases and ovn-northd, on unix sockets.
ovn_central() {
    mkdir -p "$OVN_RUN" /var/lib/ovn /var/log/ovn /etc/ovn
    for _db in nb sb; do
        ovsdb-tool create /var/lib/ovn/ovn${_db}_db.db /usr/share/ovn/ovn-$_db.ovsschema
        ovsdb-server /var/lib/ovn/ovn${_db}_db.db --remote=punix:$OVN_RUN/ovn${_db}_db.sock \
            --pidfile=$OVN_RUN/ovn${_db}_db.pid --unixctl=$OVN_RUN/ovn${_db}_db.ctl \
            --detach --no-chdir --log-file=/var/log/ovn/ovsdb-server-$_db.log \
            || fatal "ovsdb-server ($_db) did not start"
    done
    ovn-northd --ovnnb-db="$NB" --ovnsb-db="$SB" --pidfile=$OVN_RUN/ovn-northd.pid \
        --detach --no-chdir --log-file=/var/log/ovn/ovn-northd.log \
        || fatal "ovn-northd did not start"
}

# northbound: what Neutron would create: a network, three ports, a security group.
northbound() {
    nbctl ls-add "$LS"
    nbctl lsp-add "$LS" "$A_PORT" -- lsp-set-addresses "$A_PORT" "$A_MAC $A_IP" \
        -- lsp-set-port-security "$A_PORT" "$A_MAC $A_IP"
    nbctl lsp-add "$LS" "$B_PORT" -- lsp-set-addresses "$B_PORT" "$B_MAC $B_IP" \
        -- lsp-set-port-security "$B_PORT" "$B_MAC $B_IP"
    nbctl lsp-add "$LS" "$REMOTE_PORT" -- lsp-set-addresses "$REMOTE_PORT" "$GNV1_MAC $REMOTE_IP"
    nbctl pg-add "$SG_PG" "$A_PORT" "$B_PORT"
    # Ingress rules of the group (to-lport): TCP allowed, related traffic too; the rest
    # dropped at a lower priority. Egress (from-lport): everything allowed, as Neutron's
    # default egress rules do.
    nbctl --type=port-group acl-add "$SG_PG" to-lport 1002 "outport == @$SG_PG && ip4 && tcp" allow-related
    nbctl --type=port-group acl-add "$SG_PG" to-lport 1001 "outport == @$SG_PG && ip" drop
    nbctl --type=port-group acl-add "$SG_PG" from-lport 1002 "inport == @$SG_PG && ip4" allow-related
    nbctl --type=port-group acl-add "$SG_PG" from-lport 1001 "inport == @$SG_PG && ip" drop
}

# vm_port TAP PORT VM MAC [READER FLAGS]: a TAP held open by a tap-reader (the VM) on
# br-int, with the external_ids os-vif writes.
vm_port() {
    # shellcheck disable=SC2086 # flags, meant to split
    /bin/pptraffic tap-reader --dev "$1" --count-file "/tmp/$1.count" ${5:-} 2>"/tmp/$1.err" &
    wait_for 10 test -s "/tmp/$1.count" || fatal "tap reader $1 did not start: $(cat "/tmp/$1.err")"
    /sbin/ip link set "$1" up
    ovs-vsctl --no-wait add-port br-int "$1" -- set Interface "$1" \
        external_ids:iface-id="$2" external_ids:vm-uuid="$3" \
        external_ids:attached-mac="$4" external_ids:iface-status=active
}

scenario_prepare() {
    # OVS's defaults: flows idle out after 10 s, as on a real chassis.
    ovs-vsctl --no-wait remove Open_vSwitch . other_config max-idle
    # Conntrack verifies TCP checksums (the default, set anyway: the incident needs it).
    sysctl -qw net.netfilter.nf_conntrack_checksum=1
    # The DaemonSet runs the drops collector, and says to load drop_monitor at boot.
    modprobe drop_monitor || fatal "modprobe drop_monitor failed"
    mkdir -p /run/packetpath-exporter /tmp/www
    : >"$PROGRESS"

    # What ovs-ctl does when it starts Open vSwitch, which this bed starts without it:
    # record the versions of ovs-vswitchd and of the database's schema in the Open_vSwitch
    # row (the exporter's ovs_version and ovs_db_version come from there).
    ovs-vsctl --no-wait set Open_vSwitch . \
        ovs_version="$(ovs-vswitchd --version | awk '/Open vSwitch/{print $NF}')" \
        db_version="$(ovsdb-tool schema-version /usr/share/openvswitch/vswitch.ovsschema)"

    # Underlay between the chassis, neighbours fixed so no ARP is ever sent.
    underlay_up "$CH1_IP" "$CH2_IP"

    _t0=$(cat /proc/uptime)
    ovn_central
    northbound
    # This chassis, as a compute node's OVS database names it.
    ovs-vsctl --no-wait set Open_vSwitch . external_ids:system-id=ch1 \
        external_ids:ovn-remote="$SB" external_ids:ovn-encap-type=geneve \
        external_ids:ovn-encap-ip="$CH1_IP"
    # br-int exists before Nova plugs ports (os-vif creates it if missing); ovn-controller
    # takes it over.
    ovs-vsctl --no-wait --may-exist add-br br-int -- set Bridge br-int fail-mode=secure \
        other_config:disable-in-band=true
    # A answers SYNs, so the remote can open connections to it.
    vm_port "$A_TAP" "$A_PORT" "$A_VM" "$A_MAC" --answer-syn
    vm_port "$B_TAP" "$B_PORT" "$B_VM" "$B_MAC"
    # No --unixctl: the control socket goes to OVN's rundir, /var/run/ovn, which is
    # $OVN_RUN here (the base links /var/run to /run), as on a Debian host; the exporter's
    # default --collector.node.ovn-rundir finds it there (block final/node/ovn-rundir).
    ovn-controller unix:/run/openvswitch/db.sock --pidfile=$OVN_RUN/ovn-controller.pid \
        --detach --no-chdir --log-file=/var/log/ovn/ovn-controller.log \
        || fatal "ovn-controller did not start"
    # The remote chassis and its port (the Port_Binding exists once northd has run).
    sbctl chassis-add ch2 geneve "$CH2_IP"
    wait_for 60 sbctl_port_exists "$REMOTE_PORT" || fatal "northd made no Port_Binding for $REMOTE_PORT"
    sbctl lsp-bind "$REMOTE_PORT" ch2
    note ovn/central-up "uptime $_t0 -> $(cat /proc/uptime)"

    # The host's view of the exporter and of our progress.
    httpd -p 9470 -h /tmp/www || fatal "busybox httpd did not start"
    (nc -l -p 9471 >"$STOP" 2>/dev/null; echo stop >>"$STOP") &
}

sbctl_port_exists() { [ -n "$(sbctl --bare --columns=_uuid find Port_Binding logical_port="$1")" ]; }
iface_installed() { [ "$(ovs-vsctl get Interface "$1" external_ids:ovn-installed 2>/dev/null)" = '"true"' ]; }
tunnel_port_up() { ovs-dpctl show | grep -q genev_sys_6081 && ovs-vsctl list-ports br-int | grep -q '^ovn-ch2-'; }
tunnel_key() { sbctl --bare --columns=tunnel_key find "$@"; }

# ovn_state BLOCK: what OVN and OVS made of it all.
ovn_state() {
    emit "$1/nbctl-show" ovn-nbctl --db="$NB" show
    emit "$1/acls" ovn-nbctl --db="$NB" acl-list "$SG_PG"
    emit "$1/sbctl-show" ovn-sbctl --db="$SB" show
    emit "$1/port-bindings" ovn-sbctl --db="$SB" --columns=logical_port,tunnel_key,chassis list Port_Binding
    emit "$1/br-int-external-ids" ovs-vsctl get Bridge br-int external_ids
    emit "$1/interfaces" ovs-vsctl --columns=name,ofport,type,options,external_ids list Interface
    emit "$1/openflow-count" sh -c 'ovs-ofctl dump-flows br-int | wc -l'
}

# node_truth BLOCK: what the kernel and the daemons themselves say the node runs, for the
# host to compare with the exporter's packetpath_node_info and datapath series.
node_truth() {
    emit "$1/uname-r" uname -r
    emit "$1/uname-v" uname -v
    # shellcheck disable=SC2016 # expanded by the inner shell
    emit "$1/module" sh -c 'cd /sys/module/openvswitch && for f in initstate srcversion taint version; do [ -e $f ] && echo "$f $(cat $f)" || echo "$f (none)"; done'
    emit "$1/ovs-vswitchd-version" ovs-vswitchd --version
    emit "$1/open-vswitch" ovs-vsctl --columns=ovs_version,db_version,datapath_types,datapaths,external_ids list Open_vSwitch
    emit "$1/datapath-types" ovs-vsctl get Open_vSwitch . datapath_types
    # The Datapath row of br-int's type (ovn-controller creates it, ovs-vswitchd fills it).
    # shellcheck disable=SC2016 # expanded by the inner shell
    emit "$1/datapath-system" sh -c '_dp=$(ovs-vsctl get Open_vSwitch . datapaths:system) && ovs-vsctl get Datapath "$_dp" datapath_version capabilities'
    # Where ovs-vswitchd records the datapath's version: on each bridge.
    emit "$1/br-int-datapath" ovs-vsctl get Bridge br-int datapath_type datapath_version
    emit "$1/ovn-controller-version" ovn-appctl -t ovn-controller version
    emit "$1/ovn-controller--version" ovn-controller --version
    emit "$1/ovn-rundir" sh -c 'ls -ld /var/run; ls -l /run/ovn'
}

# snapshot NAME: the exporter and the kernel's own counters at one moment.
snapshot() {
    emit "$1/metrics" wget -q -O - http://127.0.0.1:9479/metrics
    emit "$1/dump-flows" ovs-dpctl dump-flows -m
    emit "$1/dpctl-show" ovs-dpctl show -s
    emit "$1/conntrack-S" conntrack -S
    emit "$1/conntrack-L-A" conntrack -L -d "$A_IP"
    emit "$1/br-int-external-ids" ovs-vsctl get Bridge br-int external_ids
    emit "$1/vm-readers" sh -c "echo $A_TAP; cat /tmp/$A_TAP.count; echo $B_TAP; cat /tmp/$B_TAP.count"
    emit "$1/traffic" cat /tmp/traffic-ovn.log
    emit "$1/sysfs" sysfs_stats
}

a_frames() { awk '$1 == "frames" { print $2 }' "/tmp/$A_TAP.count"; }
a_frames_at_least() { [ "$(a_frames)" -ge "$1" ]; }

# a_connect SPORT DPORT: a connection to A: SYN, A's SYN/ACK, ACK; waits until A has read
# both segments.
a_connect() {
    _f=$(a_frames)
    send "$A_IP" --sport "$1" --dport "$2" --flags syn
    wait_for 10 a_frames_at_least $((_f + 1)) || fatal "A did not get SYN $1 -> $2"
    # Time for the SYN/ACK to go through conntrack and out of the tunnel.
    sleep 0.5
    send "$A_IP" --sport "$1" --dport "$2" --flags ack --seq-offset 1
    wait_for 10 a_frames_at_least $((_f + 2)) || fatal "A did not get ACK $1 -> $2"
}

send() {
    _dst=$1
    shift
    /sbin/ip netns exec remote /bin/pptraffic tcp --src "$REMOTE_IP" --dst "$_dst" "$@" \
        >>/tmp/traffic-ovn.log 2>&1 || fatal "pptraffic tcp $* failed: $(tail -n 3 /tmp/traffic-ovn.log)"
}

write_progress() {
    printf 'uptime %s\nstate %s\na_bad_finack %s\nb_late_rst %s\nb_good_syn %s\n' \
        "$(cut -d' ' -f1 /proc/uptime)" "$1" "$a_bad" "$b_rst" "$b_good" >"$PROGRESS.tmp"
    mv "$PROGRESS.tmp" "$PROGRESS"
}

scenario_run() {
    wait_for 90 iface_installed "$A_TAP" || fatal "ovn-controller did not install $A_TAP"
    wait_for 30 iface_installed "$B_TAP" || fatal "ovn-controller did not install $B_TAP"
    wait_for 60 tunnel_port_up || fatal "no tunnel port to ch2: $(ovs-vsctl list-ports br-int)"
    note ovn/up "uptime $(cat /proc/uptime)"
    ovn_state ovn

    # The faked remote chassis: a metadata-mode geneve device and a route per VM that
    # carries the datapath's key and OVN's option.
    _dp=$(tunnel_key Datapath_Binding external_ids:name="$LS")
    _rk=$(tunnel_key Port_Binding logical_port="$REMOTE_PORT")
    _ak=$(tunnel_key Port_Binding logical_port="$A_PORT")
    _bk=$(tunnel_key Port_Binding logical_port="$B_PORT")
    [ -n "$_dp" ] && [ -n "$_rk" ] && [ -n "$_ak" ] && [ -n "$_bk" ] \
        || fatal "tunnel keys: datapath '$_dp' remote '$_rk' A '$_ak' B '$_bk'"
    # The remote sends as $REMOTE_IP from a raw socket but does not own it: A's SYN/ACKs come
    # back through the tunnel and are dropped there (no forwarding) instead of answered
    # with a RST by the remote's own TCP.
    /sbin/ip -n remote link add gnv1 address "$GNV1_MAC" type geneve external
    /sbin/ip -n remote addr add 10.0.0.254/24 dev gnv1
    /sbin/ip -n remote link set gnv1 up
    for _vm in "$A_IP $A_MAC $_ak" "$B_IP $B_MAC $_bk"; do
        set -- $_vm
        /sbin/ip -n remote route add "$1/32" encap ip id "$_dp" dst "$CH1_IP" ttl 64 key \
            geneve_opts "0x0102:0x80:$(printf %08x $((_rk << 16 | $3)))" dev gnv1 \
            || fatal "route to $1 through gnv1"
        /sbin/ip -n remote neigh replace "$1" lladdr "$2" dev gnv1 nud permanent
    done
    note ovn/keys "datapath $_dp
remote $_rk
$A_TAP $_ak
$B_TAP $_bk"
    emit ovn/remote-routes /sbin/ip -n remote -d route show

    a_bad=0 a_conn=0 b_rst=0 b_good=0
    : >/tmp/traffic-ovn.log
    write_progress traffic
    start_exporter
    _start=$(uptime_s)
    _cycle=0
    # 10 s cycles: B gets a late RST at 0, 3.3 and 6.6 s and a good SYN at 0 and 5 s; A
    # gets its bad FIN/ACK at the start of every sixth cycle (one a minute).
    while [ ! -s "$STOP" ] && [ $(($(uptime_s) - _start)) -lt "$TRAFFIC_S" ]; do
        _c0=$(cut -d' ' -f1 /proc/uptime)
        if [ $((_cycle % 6)) = 0 ]; then
            a_connect 41000 $((20000 + a_bad))
            a_conn=$((a_conn + 1))
            send "$A_IP" --sport 41000 --dport $((20000 + a_bad)) --flags finack --bad-checksum \
                --seq-offset 1
            a_bad=$((a_bad + 1))
            [ "$a_bad" != 1 ] || note traffic/first-loss "uptime $(cat /proc/uptime)"
        fi
        for _at in 0 3.3 6.6; do
            _now=$(cut -d' ' -f1 /proc/uptime)
            _wait=$(awk -v a="$_c0" -v b="$_at" -v n="$_now" 'BEGIN { w = a + b - n; if (w > 0) printf "%.2f", w; else print 0 }')
            sleep "$_wait"
            send "$B_IP" --sport 42000 --dport $((30000 + b_rst)) --flags rst
            b_rst=$((b_rst + 1))
            if [ "$_at" != 3.3 ]; then
                send "$B_IP" --sport 43000 --dport $((10000 + b_good)) --flags syn
                b_good=$((b_good + 1))
            fi
        done
        write_progress traffic
        _cycle=$((_cycle + 1))
        # A scrape every 2.5 minutes, for the record.
        [ $((_cycle % 15)) != 0 ] || emit "traffic/metrics-$_cycle" wget -q -O - http://127.0.0.1:9479/metrics
        _now=$(cut -d' ' -f1 /proc/uptime)
        sleep "$(awk -v a="$_c0" -v n="$_now" 'BEGIN { w = a + 10 - n; if (w > 0) printf "%.2f", w; else print 0 }')"
    done
    write_progress stopped
    note traffic/plan "a_connections $a_conn
a_bad_finack $a_bad
b_late_rst $b_rst
b_good_syn $b_good
stopped_by $([ -s "$STOP" ] && echo host || echo timeout)
uptime $(cat /proc/uptime)"
    # Counters still: then the exporter and the datapath at one moment.
    sleep 1
    snapshot final
    ovn_state final
    node_truth final/node
    emit final/exporter-log cat "$EXPORTER_LOG"
    emit final/ovn-controller-log cat /var/log/ovn/ovn-controller.log

    # Does NFLOG carry the datapath's conntrack zone? Group 0 is the exporter's while it
    # runs: stop it (it restores the nf_log settings), then log invalids to a listener
    # that asks for NFULA_CT.
    kill "$EXPORTER_PID" 2>/dev/null || true
    wait "$EXPORTER_PID" 2>/dev/null || true
    sysctl -qw net.netfilter.nf_conntrack_log_invalid=255
    echo nfnetlink_log >/proc/sys/net/netfilter/nf_log/2
    /bin/pptraffic nflog-zones --seconds 8 >/tmp/nflog-zones.out 2>&1 &
    _nl=$!
    sleep 2
    a_connect 41001 29000
    emit nflog/conntrack-L conntrack -L -p tcp --dport 29000
    send "$A_IP" --sport 41001 --dport 29000 --flags finack --bad-checksum --seq-offset 1
    send "$B_IP" --sport 42001 --dport 39000 --flags rst
    send "$B_IP" --sport 42002 --dport 39001 --flags syn --bad-checksum
    wait "$_nl" || true
    emit nflog/zones sh -c "cat /tmp/nflog-zones.out; echo; echo '# ifindex:'; /sbin/ip -o link | cut -d' ' -f1-2"
    emit nflog/br-int-external-ids ovs-vsctl get Bridge br-int external_ids
    emit nflog/conntrack-S conntrack -S
    emit nflog/dump-flows ovs-dpctl dump-flows -m
    emit ovn-northd-log cat /var/log/ovn/ovn-northd.log
}
