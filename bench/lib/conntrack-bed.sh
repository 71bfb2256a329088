# shellcheck shell=bash
# The conntrack_invalid benchmarks' bed (bench/nflog-throughput.sh, bench/ctinv-kernel-cost.sh),
# like tests/common's ConntrackBed. Sourced, not run; the caller sets SRV and CLI (namespace
# names) and deletes the namespaces when it is done.

# conntrack_bed: namespaces $SRV and $CLI (IPv6 off, lo up) joined by a veth pair,
# c0 10.201.0.1/30 in $CLI and s0 10.201.0.2/30 in $SRV; in $SRV nftables counts and drops
# `ct state invalid` on input, and nf_conntrack_checksum=1.
conntrack_bed() {
    local ns
    ip netns add "$SRV"
    ip netns add "$CLI"
    for ns in "$SRV" "$CLI"; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        ip -n "$ns" link set lo up
    done
    ip -n "$CLI" link add c0 type veth peer name s0 netns "$SRV"
    ip -n "$CLI" addr add 10.201.0.1/30 dev c0
    ip -n "$CLI" link set c0 up
    ip -n "$SRV" addr add 10.201.0.2/30 dev s0
    ip -n "$SRV" link set s0 up
    ip netns exec "$SRV" nft -f - <<'NFT'
table inet pp {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state invalid counter drop
    }
}
NFT
    ip netns exec "$SRV" sysctl -qw net.netfilter.nf_conntrack_checksum=1
}

in_srv() { ip netns exec "$SRV" "$@"; }

# nft_invalid: the nftables counter, packets conntrack marked invalid in $SRV.
nft_invalid() {
    in_srv nft list chain inet pp input | awk '{for (i = 1; i < NF; i++) if ($i == "packets") {print $(i + 1); exit}}'
}
