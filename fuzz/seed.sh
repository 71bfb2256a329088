#!/usr/bin/env bash
# Builds each fuzz target's seed corpus under DIR/<target> (default .cache/fuzz-corpus):
# the captured kernel replies in tests/fixtures, the golden expositions in tests/golden,
# and, where nothing was captured (NFLOG datagrams, OVSDB's JSON-RPC), a few messages
# built here the way the kernel and ovsdb-server write them. Existing corpus files stay.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.cache/fuzz-corpus}

# seed TARGET FILE...: copies fixtures in, named after their path (no collisions).
seed() {
    local target=$1 f
    shift
    mkdir -p "$out/$target"
    for f in "$@"; do
        [ -f "$f" ] || continue
        local name=${f#tests/}
        cp "$f" "$out/$target/seed-${name//\//_}"
    done
}

shopt -s nullglob
bins=(tests/fixtures/netlink/*.bin tests/fixtures/netlink-eperm/*.bin tests/fixtures/ovs/*.bin)
seed netlink_wire "${bins[@]}"
seed rtnetlink tests/fixtures/{netlink,netlink-eperm,ovs}/rtnl_*.bin
seed conntrack tests/fixtures/{netlink,netlink-eperm,ovs}/ctnetlink_*.bin \
    tests/fixtures/proc/net/stat/nf_conntrack tests/fixtures/ovs/proc/net/stat/nf_conntrack
seed genl_ctrl tests/fixtures/{netlink,netlink-eperm,ovs}/genl_families.bin
seed ovs_dp tests/fixtures/ovs/ovs_dp_get*.bin tests/fixtures/ovs/ovs_vport_get*.bin
seed ovs_flow tests/fixtures/ovs/ovs_flow_get*.bin
seed ethtool tests/fixtures/{netlink,netlink-eperm}/ethtool_*.bin
seed exposition tests/golden/*.txt

# Netlink in hex, host byte order (little-endian: x86_64, aarch64).
le16() { printf '%02x%02x' $(($1 & 255)) $((($1 >> 8) & 255)); }
le32() { printf '%s%s' "$(le16 $(($1 & 65535)))" "$(le16 $((($1 >> 16) & 65535)))"; }
be32() { printf '%02x%02x%02x%02x' $((($1 >> 24) & 255)) $((($1 >> 16) & 255)) $((($1 >> 8) & 255)) $(($1 & 255)); }
text() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
zeros() { local z='' i; for ((i = 0; i < $1; i++)); do z+=00; done; printf '%s' "$z"; }
# nla TYPE HEX: one attribute, padded to 4 bytes.
nla() {
    local len=$((4 + ${#2} / 2))
    printf '%s%s%s%s' "$(le16 $len)" "$(le16 "$1")" "$2" "$(zeros $(((4 - len % 4) % 4)))"
}
# nlmsg TYPE SEQ HEX: one message (payloads here are already 4-byte aligned).
nlmsg() { printf '%s%s%s%s%s%s' "$(le32 $((16 + ${#3} / 2)))" "$(le16 "$1")" 0000 "$(le32 "$2")" 00000000 "$3"; }
write_hex() { printf '%b' "$(sed 's/../\\x&/g' <<<"$2")" >"$1"; }

# NFLOG: NFULNL_MSG_PACKET (subsystem 4, message 0) with nfgenmsg, then NFULA_PREFIX,
# NFULA_IFINDEX_INDEV, NFULA_SEQ and NFULA_PAYLOAD (the IP packet, first 128 bytes).
nflog_msg() { # FAMILY(2|10) PREFIX SEQ PACKET_HEX
    local p
    p="$(printf '%02x' "$1")000000$(nla 10 "$(text "$2")00")$(nla 4 "$(be32 7)")$(nla 12 "$(be32 "$3")")$(nla 9 "$4")"
    nlmsg $((4 << 8)) 0 "$p"
}
tcp_finack=$(zeros 12)5011$(zeros 6)
tcp_syn=$(zeros 12)5002$(zeros 6)
v4_tcp=45000028000040004006$(zeros 2)0a0000010a000002$tcp_finack
v4_syn=4500002800004000400600000a0000010a000002$tcp_syn
v4_udp=4500001c00004000401100000a0000010a000002$(zeros 8)
# IPv6: hop-by-hop, a first fragment, then TCP; and a later fragment with no TCP header.
v6_hdr() { printf '60000000%s%02x40%s' "$(printf '%04x' "$1")" "$2" "$(zeros 32)"; }
v6_tcp=$(v6_hdr 36 0)2c00$(zeros 6)0600000000000001$tcp_finack
v6_frag=$(v6_hdr 24 44)060005c900000001$(printf 'ff%.0s' {1..16})
n=$out/nflog
mkdir -p "$n"
write_hex "$n/seed-v4-bad-checksum" "$(nflog_msg 2 'nf_ct_proto_6: bad checksum ' 1 "$v4_tcp")"
write_hex "$n/seed-v6-window" "$(nflog_msg 10 'nf_ct_proto_6: SEQ is over the upper bound (over the window of the receiver)' 2 "$v6_tcp")"
write_hex "$n/seed-v4-udp" "$(nflog_msg 2 'nf_ct_proto_17: bad checksum ' 3 "$v4_udp")"
# Captured in the OVS test bed: messages with NFULA_CT (the conntrack zone), one per line.
i=0
while read -r line; do
    i=$((i + 1))
    write_hex "$n/seed-ovs-ct-zone-$i" "$line"
done < <(grep -v '^#' tests/fixtures/nflog-ct/ovs-zone7.hex)
write_hex "$n/seed-batch" "$(nflog_msg 2 'nf_ct_proto_6: invalid tcp flag combination ' 10 "$v4_syn")$(nflog_msg 2 'drop-from-nft ' 11 "$v4_syn")$(nflog_msg 10 'nf_ct_proto_6: truncated packet ' 15 "$v6_frag")$(nlmsg 2 0 "$(zeros 20)")"

# NET_DM (the drop monitor): a packet alert as 6.12 sends it (origin, PC, reason, symbol,
# in_port with the ifindex, timestamp, original length, protocol, the first 6 bytes), one
# as 5.10 sends it (no reason), and the statistics reply. Family id 0x1d (dynamic).
d=$out/net_dm
mkdir -p "$d"
genl() { printf '%02x020000%s' "$1" "$2"; } # CMD HEX: genlmsghdr (version 2), attributes
dm_alert() { # REASON_HEX (empty: none)
    genl 5 "$(nla 14 0000)$(nla 2 "$(zeros 8)")$1$(nla 3 "$(text 'tun_net_xmit+0x1f4/0x5a0')00")$(nla 4 "$(nla 0 "$(le32 7)")")$(nla 5 "$(zeros 8)")$(nla 10 "$(le32 54)")$(nla 6 0008)$(nla 7 fa163e000001)"
}
write_hex "$d/seed-alert-6.12" "$(nlmsg 29 0 "$(dm_alert "$(nla 23 "$(text FULL_RING)00")")")"
write_hex "$d/seed-alerts-5.10" "$(nlmsg 29 0 "$(dm_alert '')")$(nlmsg 29 0 "$(dm_alert '')")"
write_hex "$d/seed-stats" "$(nlmsg 29 3 "$(genl 9 "$(nla 12 "$(nla 0 "$(zeros 8)")")$(nla 13 "$(nla 0 "$(zeros 8)")")")")"

# OVSDB: what ovsdb-server writes back, messages back to back (RFC 7047 §4.1.5, §4.1.6).
j=$out/ovsdb
mkdir -p "$j"
row='"name":"tap519d7cc4-75","external_ids":["map",[["attached-mac","fa:16:3e:11:22:33"],["iface-id","519d7cc4-7593-4944-af80-6a8a9b4f4e9a"],["iface-status","active"],["vm-uuid","0c1e6a4e-6d0e-4b59-9f0a-7a3c2f1d2e3f"]]],"error":["set",[]]'
printf '%s' '{"id":1,"result":{"Interface":{"7b2f1c4e-0d1a-4c55-9c39-5a0e3c2b1f00":{"new":{'"$row"'}}}},"error":null}' >"$j/seed-monitor-reply"
printf '%s' '{"id":1,"result":{"Interface":{"u1":{"new":{'"$row"'}}}},"error":null}{"id":"echo","method":"echo","params":[]}{"id":null,"method":"update","params":[null,{"Interface":{"u1":{"old":{"error":["set",[]]},"new":{"error":"could not open network device tap519d7cc4-75 (No such device)"}}}}]}{"id":null,"method":"update","params":[null,{"Interface":{"u1":{"old":{"name":"tap519d7cc4-75"}}},"Bridge":{"b1":{"new":{"name":"br-int"}}}}]}{"id":null,"met' >"$j/seed-session"
printf '%s' '{"id":1,"result":null,"error":"unknown database"}' >"$j/seed-monitor-error"
printf '%s' '{"Interface":{"u2":{"new":{"name":"ééééé","external_ids":["map",[]],"error":["set",["x"]]}},"u3":{"new":{"external_ids":"x"}}}}' >"$j/seed-table-updates"
# The schema's answer, the node's rows, and a daemon's unixctl answer to `version`.
printf '%s' '{"id":2,"result":{"name":"Open_vSwitch","version":"8.3.1","tables":{"Interface":{"columns":{"name":{},"external_ids":{},"error":{}}},"Bridge":{"columns":{"name":{},"external_ids":{}}},"Open_vSwitch":{"columns":{"ovs_version":{},"datapath_types":{},"datapaths":{}}}}},"error":null}' >"$j/seed-schema"
printf '%s' '{"Open_vSwitch":{"o1":{"new":{"ovs_version":"3.1.0","db_version":"8.3.1","datapath_types":["set",["netdev","system"]],"datapaths":["map",[["system",["uuid","d1"]]]],"external_ids":["map",[["system-id","compute-1"],["ovn-remote","tcp:10.0.0.1:6642"]]]}}},"Datapath":{"d1":{"new":{"datapath_version":"<built-in>","capabilities":["map",[["ct_state","true"],["max_vlan_headers","2"]]]}}}}' >"$j/seed-node"
printf '%s' '{"id":0,"result":"ovn-controller 24.03.2\nOpen vSwitch Library 3.3.0\nOpenFlow versions 0x6:0x6\nSB DB Schema 20.33.0\n","error":null}' >"$j/seed-unixctl-version"

for t in "$out"/*/; do
    echo "seeds: $(find "$t" -name 'seed-*' | wc -l) in $t"
done
