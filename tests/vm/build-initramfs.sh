#!/usr/bin/env bash
# Builds the guest of the OVS kernel test bed from Debian 12 packages: a cloud kernel and an
# initramfs in two parts.
#
#   BASE     kernel modules, busybox, Open vSwitch, iproute2, conntrack and the shared
#            libraries they load. Slow to make (downloads), so it is cached under
#            $PP_VM_CACHE/base-<key>/, where <key> hashes the package versions and the build
#            scripts, and rebuilt only when that directory is missing.
#   OVERLAY  the exporter, the pptraffic tool and the guest scripts (tests/vm/guest/).
#            Rebuilt on every call; cheap. The kernel unpacks concatenated cpio archives in
#            order, so OVERLAY is laid over BASE and rebuilding our code never rebuilds BASE.
#
# usage: tests/vm/build-initramfs.sh [--base-only] [--exporter PATH] [--pptraffic PATH]
#                                    [--guest-env FILE] [--overlay-out FILE]
# Prints KERNEL=, BASE= and OVERLAY= shell assignments on stdout; progress goes to stderr.
# Env: PP_VM_CACHE (default <repo>/.cache/vm), PP_VM_KERNEL (a linux-image-6.1.0-N-cloud-amd64
# package; default the newest apt knows).
#
# Needs apt-get, apt-cache, dpkg, python3 and gzip on the host; root only to install qemu
# or when the apt lists are empty.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PP_VM_CACHE:-$REPO/.cache/vm}
DEBS=$CACHE/debs

# Modules the guest loads; the build adds their dependencies from modules.dep.
MODULES="openvswitch geneve veth tun nf_conntrack_netlink"
# Files the guest runs or reads; elfdeps.py adds the shared libraries they load.
WANT=(
    bin/busybox
    bin/ip sbin/ip
    usr/sbin/conntrack
    usr/sbin/ovsdb-server usr/bin/ovsdb-tool usr/bin/ovsdb-client
    usr/lib/openvswitch-switch/ovs-vswitchd
    usr/bin/ovs-vsctl usr/bin/ovs-appctl usr/bin/ovs-ofctl usr/bin/ovs-dpctl
    usr/share/openvswitch/vswitch.ovsschema
    # Rust binaries of this crate unwind through libgcc_s; nothing above needs it.
    soname:libgcc_s.so.1
)
TOP_PACKAGES=(busybox-static openvswitch-switch openvswitch-common iproute2 conntrack libgcc-s1)

log() { echo "build-initramfs: $*" >&2; }
die() { echo "build-initramfs: $*" >&2; exit 1; }

base_only=false exporter=$REPO/target/release/packetpath-exporter
pptraffic=$REPO/target/release/examples/pptraffic guest_env="" overlay_out=""
while [ $# -gt 0 ]; do
    case $1 in
        --base-only) base_only=true ;;
        --exporter) exporter=$2; shift ;;
        --pptraffic) pptraffic=$2; shift ;;
        --guest-env) guest_env=$2; shift ;;
        --overlay-out) overlay_out=$2; shift ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# --- host prerequisites -------------------------------------------------------------------

# A fresh machine may have empty apt lists; one update is enough for everything below.
if [ -z "$(candidate busybox-static)" ] || [ "$(candidate busybox-static)" = "(none)" ]; then
    log "apt lists are empty: apt-get update"
    apt-get update -qq >&2
fi
if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-system-x86 >&2
fi

# --- pick versions, derive the cache key --------------------------------------------------

kernel_pkg=${PP_VM_KERNEL:-$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' \
    | awk '{ print $1 }' | sort -V | tail -n 1)}
[ -n "$kernel_pkg" ] || die "apt knows no linux-image-6.1.0-*-cloud-amd64 (is this bookworm?)"

versions=""
for pkg in "$kernel_pkg" "${TOP_PACKAGES[@]}"; do
    v=$(candidate "$pkg")
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $pkg"
    versions+="$pkg $v"$'\n'
done
key=$( { printf '%s' "$versions"; cat "$HERE/build-initramfs.sh" "$HERE/elfdeps.py"; } \
    | sha256sum | cut -c1-16)
BASE_DIR=$CACHE/base-$key
KVER=${kernel_pkg#linux-image-}

# --- base ---------------------------------------------------------------------------------

# Downloads (once, into $DEBS) and unpacks one package into $pool/<name>.
fetch() {
    local pkg=$1 v deb
    [ -d "$pool/$pkg" ] && return 0
    v=$(candidate "$pkg")
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate version for $pkg"
    # apt-get download names files <pkg>_<version with : as %3a>_<arch>.deb
    deb=$(ls "$DEBS/${pkg}_${v//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg $v"
        # The sandbox user cannot write into a root-owned cache; nothing here is installed.
        (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$v" >&2)
        deb=$(ls "$DEBS/${pkg}_${v//:/%3a}_"*.deb | head -n 1)
    fi
    dpkg -x "$deb" "$pool/$pkg"
}

# Library packages a package depends on directly; Debian's shlibs put the provider of every
# soname a binary needs among them.
lib_depends() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$1" \
        | awk '$1 ~ /Depends:$/ && $2 ~ /^(lib|zlib)/ { sub(/:any$/, "", $2); print $2 }' \
        | sort -u
}

build_base() {
    local work=$BASE_DIR.tmp
    rm -rf "$work"
    mkdir -p "$work/pool" "$DEBS"
    pool=$work/pool
    local root=$work/tree/root
    mkdir -p "$root"

    for pkg in "$kernel_pkg" "${TOP_PACKAGES[@]}"; do fetch "$pkg"; done
    local bb=$pool/busybox-static/bin/busybox

    # Shared libraries: resolve, fetch the dependencies of whoever misses a soname, repeat.
    local deps missing round=0
    while :; do
        deps=$(python3 "$HERE/elfdeps.py" "$pool" "${WANT[@]}")
        missing=$(awk '$1 == "missing"' <<<"$deps")
        [ -z "$missing" ] && break
        round=$((round + 1))
        [ $round -le 6 ] || die "unresolved after $round rounds:"$'\n'"$missing"
        local fetched=false owner dep
        for owner in $(awk '{ print $3 }' <<<"$missing" | sort -u); do
            [ "$owner" = - ] && continue
            for dep in $(lib_depends "$owner"); do
                [ -d "$pool/$dep" ] && continue
                fetch "$dep"
                fetched=true
            done
        done
        $fetched || die "no package provides:"$'\n'"$missing"
    done
    local pkg rel
    while read -r _ pkg rel; do
        mkdir -p "$root/$(dirname "$rel")"
        cp -a "$pool/$pkg/$rel" "$root/$rel"
    done < <(awk '$1 == "copy"' <<<"$deps")

    # Debian links ovs-vswitchd into /usr/sbin through alternatives, at install time.
    ln -s ../lib/openvswitch-switch/ovs-vswitchd "$root/usr/sbin/ovs-vswitchd"
    # Busybox for every command no package file provides (the kernel runs /sbin/modprobe).
    local applet
    for applet in $("$bb" --list-full); do
        [ -e "$root/$applet" ] || [ -L "$root/$applet" ] && continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -s /bin/busybox "$root/$applet"
    done

    # Kernel: the .deb ships no modules.dep and the host may have no kmod.
    local kpool=$pool/$kernel_pkg
    "$bb" depmod -b "$kpool" "$KVER"
    local mods
    mods=$(awk -v want="$MODULES" '
        { key = $1; sub(/:$/, "", key); deps[key] = ""
          for (i = 2; i <= NF; i++) deps[key] = deps[key] " " $i
          n = key; sub(/.*\//, "", n); sub(/\.ko$/, "", n); bypath[n] = key }
        END {
          nw = split(want, w, " ")
          for (i = 1; i <= nw; i++) {
            if (!(w[i] in bypath)) { print "no module " w[i] > "/dev/stderr"; exit 1 }
            q[++qn] = bypath[w[i]]
          }
          for (i = 1; i <= qn; i++) {
            m = q[i]; if (m in seen) continue; seen[m] = 1; print m
            nd = split(deps[m], d, " "); for (j = 1; j <= nd; j++) q[++qn] = d[j]
          }
        }' "$kpool/lib/modules/$KVER/modules.dep")
    local m
    for m in $mods; do
        mkdir -p "$root/lib/modules/$KVER/$(dirname "$m")"
        cp "$kpool/lib/modules/$KVER/$m" "$root/lib/modules/$KVER/$m"
    done
    cp "$kpool/lib/modules/$KVER/modules.builtin" "$kpool/lib/modules/$KVER/modules.order" \
        "$root/lib/modules/$KVER/"
    "$bb" depmod -b "$root" "$KVER"
    log "modules: $(echo "$mods" | sed 's,.*/,,; s,\.ko$,,' | tr '\n' ' ')"

    mkdir -p "$root"/{proc,sys,dev,run,tmp,root,etc/openvswitch,var/log/openvswitch}
    ln -s ../run "$root/var/run"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"

    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) \
        | gzip -n -6 >"$work/base.cpio.gz"
    cp "$kpool/boot/vmlinuz-$KVER" "$work/vmlinuz"
    {
        printf '%s' "$versions"
        echo "# every package in the base:"
        for pkg in $(ls "$pool"); do echo "$pkg $(candidate "$pkg")"; done
    } >"$work/versions.txt"
    rm -rf "$pool"
    mv "$work" "$BASE_DIR"
    log "base: $BASE_DIR ($(du -h "$BASE_DIR/base.cpio.gz" | cut -f1) gzipped)"
}

if [ -f "$BASE_DIR/base.cpio.gz" ] && [ -f "$BASE_DIR/vmlinuz" ]; then
    log "base cached: $BASE_DIR"
else
    build_base
fi
echo "KERNEL=$BASE_DIR/vmlinuz"
echo "BASE=$BASE_DIR/base.cpio.gz"
$base_only && exit 0

# --- overlay ------------------------------------------------------------------------------

[ -x "$exporter" ] || die "no exporter binary at $exporter (cargo build --release)"
[ -x "$pptraffic" ] || die "no pptraffic at $pptraffic (cargo build --release --example pptraffic)"
# Host and guest are both bookworm, so dynamically linked binaries run when the base holds
# every library they load; check that here rather than as a cryptic failure in the guest.
missing=$(python3 "$HERE/elfdeps.py" "$BASE_DIR/tree" "$(realpath "$exporter")" \
    "$(realpath "$pptraffic")" | awk '$1 == "missing" { print $2 }')
[ -z "$missing" ] || die "the base lacks libraries our binaries need: $missing"

overlay_out=${overlay_out:-$CACHE/overlay.cpio.gz}
ov=$(mktemp -d)
trap 'rm -rf "$ov"' EXIT
mkdir -p "$ov/bin" "$ov/guest"
install -m 0755 "$exporter" "$ov/bin/packetpath-exporter"
install -m 0755 "$pptraffic" "$ov/bin/pptraffic"
install -m 0755 "$HERE/guest/init" "$ov/init"
for f in "$HERE"/guest/*; do
    [ "$(basename "$f")" = init ] || install -m 0755 "$f" "$ov/guest/"
done
if [ -n "$guest_env" ]; then install -m 0644 "$guest_env" "$ov/guest/env"; else : >"$ov/guest/env"; fi
bb=$BASE_DIR/tree/root/bin/busybox
(cd "$ov" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) \
    | gzip -n -1 >"$overlay_out"
echo "OVERLAY=$overlay_out"
