#!/usr/bin/env bash
# Boots the OVS kernel test bed: a Debian kernel under qemu (software emulation; KVM does
# not work on these machines; bullseye 5.10, bookworm 6.1 or trixie 6.12, with that
# release's Open vSwitch) runs a scenario from tests/vm/guest/ with the exporter inside, and
# hands every output back in <out>/results.txt, in blocks a Rust test can assert on:
#
#   === BEGIN <phase>/<what> ===      e.g. checksum1/metrics, checksum1/dump-flows
#   ...
#   === END <phase>/<what> ===
#   === DONE ===                      last line of a run that went through
#
# usage: tests/vm/run.sh [--release NAME] [--scenario NAME] [--out DIR] [--timeout SECONDS]
#                        [--exporter PATH] [--pptraffic PATH] [--no-build]
#                        [--forward HOSTPORT:GUESTPORT]...
# --forward gives the guest a NIC on qemu's user network (restrict=on: the guest reaches
# nothing) that forwards 127.0.0.1:HOSTPORT to the guest's port; without it the guest has
# no network device. Scenario ovn uses the OVN variant of the base (PP_VM_OVN=1).
# Without --exporter/--pptraffic, run.sh builds both statically linked (they then run on
# every release, whatever the guest's glibc) into .cache/static-target, the directory and
# flags tests/container.rs builds the exporter with.
# Env:   PP_EXPORTER_FLAGS  extra exporter flags in the guest, e.g.
#                           "--collector.ovs --collector.ovs_flows"
#        PP_VM_RELEASE      default of --release (bookworm)
#        PP_VM_CACHE, PP_VM_KERNEL  see build-initramfs.sh
#        PP_EXPORTER_ARGS   the exporter's base args in scenario ovn (default :9479 only)
#        PP_OVN_TRAFFIC_S   the longest scenario ovn sends traffic (default 660)
#        PP_DROPS_RATES, PP_DROPS_ROUNDS, PP_DROPS_SECONDS, PP_DROPS_MODES
#                           scenario drops-bench (see guest/scenario-drops-bench.sh)
# Exits 0 when the guest wrote `=== DONE ===`; prints where results.txt is either way.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PP_VM_CACHE:-$REPO/.cache/vm}

usage() {
    echo "usage: $0 [--release bullseye|bookworm|trixie] [--scenario NAME] [--out DIR]" \
        "[--timeout S] [--exporter PATH] [--pptraffic PATH] [--no-build]" >&2
    exit 2
}
release=${PP_VM_RELEASE:-bookworm} scenario=seed out="" timeout=240 build=true exporter=""
pptraffic="" forwards=""
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || case $1 in --no-build) ;; *) usage ;; esac
    case $1 in
        --release) release=$2; shift ;;
        --scenario) scenario=$2; shift ;;
        --out) out=$2; shift ;;
        --timeout) timeout=$2; shift ;;
        --exporter) exporter=$2; shift ;;
        --pptraffic) pptraffic=$2; shift ;;
        --no-build) build=false ;;
        --forward)
            [[ $2 =~ ^[0-9]+:[0-9]+$ ]] || usage
            forwards="$forwards,hostfwd=tcp:127.0.0.1:${2%%:*}-:${2#*:}"; shift ;;
        *) usage ;;
    esac
    shift
done
case $release in
    bullseye | bookworm | trixie) ;;
    *) echo "unknown release $release (bullseye, bookworm or trixie)" >&2; exit 2 ;;
esac
[ -f "$HERE/guest/scenario-$scenario.sh" ] || { echo "no scenario $scenario" >&2; exit 2; }
out=${out:-$CACHE/$release/run}
if [ "$scenario" = ovn ]; then
    [ "$release" = trixie ] || { echo "scenario ovn needs --release trixie (OVN 25.03)" >&2; exit 2; }
    export PP_VM_OVN=1
fi
nic=(-nic none)
[ -z "$forwards" ] || nic=(-nic "user,model=virtio-net-pci,restrict=on$forwards")

# Build the binaries no path was given for (a caller such as `cargo test` may pass the
# debug ones it already has; dynamically linked, they need a guest glibc as new as the
# host's: bookworm and trixie here).
# Static, so one build serves every release: bullseye's glibc 2.31 lacks symbols a
# bookworm build needs.
STATIC_TARGET=$REPO/.cache/static-target
STATIC_BIN=$STATIC_TARGET/x86_64-unknown-linux-gnu/release
targets=()
[ -n "$exporter" ] || { exporter=$STATIC_BIN/packetpath-exporter; targets+=(--bin packetpath-exporter); }
[ -n "$pptraffic" ] || { pptraffic=$STATIC_BIN/examples/pptraffic; targets+=(--example pptraffic); }
if $build && [ ${#targets[@]} -gt 0 ]; then
    (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$STATIC_TARGET \
        cargo build --release --locked --target x86_64-unknown-linux-gnu "${targets[@]}")
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/results.txt" "$out/console.log" "$out/initrd.img"

# The guest reads its settings from /guest/env; single-quote them for its shell.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
    echo "PP_SCENARIO=$(quote "$scenario")"
    echo "PP_EXPORTER_FLAGS=$(quote "${PP_EXPORTER_FLAGS:-}")"
    echo "PP_EXPORTER_ARGS=$(quote "${PP_EXPORTER_ARGS:---web.listen-address=:9479}")"
    echo "PP_OVN_TRAFFIC_S=$(quote "${PP_OVN_TRAFFIC_S:-660}")"
    for v in PP_DROPS_RATES PP_DROPS_ROUNDS PP_DROPS_SECONDS PP_DROPS_MODES; do
        [ -z "${!v:-}" ] || echo "$v=$(quote "${!v}")"
    done
    echo "PP_NIC=$([ -n "$forwards" ] && echo 1 || echo 0)"
} >"$out/guest.env"

paths=$(PP_VM_RELEASE=$release PP_VM_CACHE=$CACHE "$HERE/build-initramfs.sh" --exporter "$exporter" --pptraffic "$pptraffic" \
    --guest-env "$out/guest.env" --overlay-out "$out/overlay.cpio.gz")
KERNEL=$(sed -n 's/^KERNEL=//p' <<<"$paths")
BASE=$(sed -n 's/^BASE=//p' <<<"$paths")
OVERLAY=$(sed -n 's/^OVERLAY=//p' <<<"$paths")
# qemu takes one initrd; the kernel unpacks concatenated archives one after the other.
cat "$BASE" "$OVERLAY" >"$out/initrd.img"

echo "booting $release (scenario $scenario, timeout ${timeout}s); console: $out/console.log" >&2
start=$(date +%s)
rc=0
# Two CPUs, as conntrack statistics are per CPU and a test must sum them.
timeout -k 10 "$timeout" qemu-system-x86_64 \
    -accel tcg -cpu max -m 1024 -smp 2 \
    -nodefaults -no-user-config -display none -monitor none -no-reboot "${nic[@]}" \
    -kernel "$KERNEL" -initrd "$out/initrd.img" \
    -append "console=ttyS0 panic=-1 quiet" \
    -serial "file:$out/console.log" -serial "file:$out/results.txt" \
    </dev/null || rc=$?
echo "guest ran $(($(date +%s) - start))s" >&2

echo "results: $out/results.txt"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "qemu killed after ${timeout}s" >&2
fi
if ! grep -qx '=== DONE ===' "$out/results.txt" 2>/dev/null; then
    echo "the guest did not finish (qemu status $rc); last console lines:" >&2
    tail -n 20 "$out/console.log" >&2 || true
    sed -n '/^=== BEGIN fatal ===$/,/^=== END fatal ===$/p' "$out/results.txt" >&2 || true
    exit 1
fi
