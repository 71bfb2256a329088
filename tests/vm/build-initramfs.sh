#!/usr/bin/env bash
# Builds the guest of the OVS kernel test bed from the packages of one Debian release
# (bullseye, bookworm or trixie): a cloud kernel and an initramfs in two parts.
#
#   BASE     kernel modules, busybox, Open vSwitch, iproute2, conntrack and the shared
#            libraries they load. The part that downloads (~40 MB), so it is cached under
#            $PP_VM_CACHE/<release>/base-<key>/, where <key> hashes the package versions and
#            the build scripts, and rebuilt only when that directory is missing; the .debs
#            stay in $PP_VM_CACHE/<release>/debs/ for the next rebuild. Each release keeps
#            its own (one) base.
#   OVERLAY  the exporter, the pptraffic tool and the guest scripts (tests/vm/guest/).
#            Rebuilt on every call; cheap. The kernel unpacks concatenated cpio archives in
#            order, so OVERLAY is laid over BASE and rebuilding our code never rebuilds BASE.
#
# Packages of the host's own release come from the host's apt lists. Any other release is
# fetched through a private apt configuration under $PP_VM_CACHE/<release>/apt/ (own
# sources.list, lists and cache; the host's sources and state are never touched), whose
# sources.list names the Debian mirrors the host's apt sources already use.
#
# usage: tests/vm/build-initramfs.sh [--base-only] [--exporter PATH] [--pptraffic PATH]
#                                    [--guest-env FILE] [--overlay-out FILE]
# Prints KERNEL=, BASE= and OVERLAY= shell assignments on stdout; progress goes to stderr.
# Env: PP_VM_RELEASE (bullseye, bookworm or trixie; default bookworm), PP_VM_CACHE (default
# <repo>/.cache/vm), PP_VM_KERNEL (a linux-image-…-cloud-amd64 package of that release;
# default the newest apt knows), PP_VM_OVN=1 (the OVN variant of the base: ovn-central,
# ovn-host, ovn-common and virtio_net for a NIC, cached apart as base-ovn-<key>; its
# packages are part of the key).
#
# Needs apt-get, apt-cache, dpkg, python3 and gzip on the host (and xz for trixie's
# modules; installed when missing, as root); root only to install qemu or xz-utils, or when
# the host's own apt lists are empty.
set -euo pipefail

log() { echo "build-initramfs: $*" >&2; }
die() { echo "build-initramfs: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${PP_VM_CACHE:-$REPO/.cache/vm}
RELEASE=${PP_VM_RELEASE:-bookworm}
RDIR=$CACHE/$RELEASE
DEBS=$RDIR/debs

# What differs between releases (everything else is found from the packages themselves:
# renamed libraries such as libssl3t64 or libssl1.1 come from the packages' Depends):
#   kernel_re   the cloud kernel packages (apt-cache search); the newest match is used.
#               bullseye also has 6.1 backports (6.1.0-0.deb11.N), not wanted here.
#   vswitchd    where the package puts ovs-vswitchd (the alternatives system links it to
#               /usr/sbin at install time). bullseye's openvswitch-common ships it with its
#               private libopenvswitch/libofproto beside it, also linked by alternatives.
#   merged_usr  the packages ship usr/bin, usr/sbin, usr/lib only; the guest gets the
#               bin -> usr/bin, sbin, lib, lib64 links a merged-/usr system has. Its kernel
#               modules are .ko.xz, decompressed here (busybox modprobe/depmod want .ko).
case $RELEASE in
    bullseye)
        kernel_re='^linux-image-5\.10\.0-[0-9]+-cloud-amd64$'
        vswitchd=usr/lib/openvswitch-common/ovs-vswitchd merged_usr=false ;;
    bookworm)
        kernel_re='^linux-image-6\.1\.0-[0-9]+-cloud-amd64$'
        vswitchd=usr/lib/openvswitch-switch/ovs-vswitchd merged_usr=false ;;
    trixie)
        kernel_re='^linux-image-6\.12\.[0-9]+\+deb13(\.[0-9]+)?-cloud-amd64$'
        vswitchd=usr/lib/openvswitch-switch/ovs-vswitchd merged_usr=true ;;
    *) echo "build-initramfs: unknown release '$RELEASE' (bullseye, bookworm or trixie)" >&2
       exit 2 ;;
esac

# Modules the guest loads; the build adds their dependencies from modules.dep.
MODULES="openvswitch geneve veth tun nf_conntrack_netlink nfnetlink_log"
# Modules in the base that /init does not load: the scenario that needs one modprobes it
# (scenarios drops and drops-bench: drop_monitor, which no other scenario should find
# loaded, and nf_tables).
SCENARIO_MODULES="drop_monitor nf_tables"
# Files the guest runs or reads; elfdeps.py adds the shared libraries they load.
WANT=(
    bin/busybox
    bin/ip sbin/ip
    usr/sbin/conntrack
    usr/sbin/ovsdb-server usr/bin/ovsdb-tool usr/bin/ovsdb-client
    "$vswitchd"
    usr/bin/ovs-vsctl usr/bin/ovs-appctl usr/bin/ovs-ofctl usr/bin/ovs-dpctl
    usr/share/openvswitch/vswitch.ovsschema
    usr/sbin/nft
    # Rust binaries of this crate unwind through libgcc_s; nothing above needs it.
    soname:libgcc_s.so.1
)
TOP_PACKAGES=(busybox-static openvswitch-switch openvswitch-common iproute2 conntrack nftables libgcc-s1)
# dropwatch: the peer of the drops benchmark, and the competitor of the drops scenario.
# Debian has it from bookworm on; bullseye's scenario does without.
if [ "$RELEASE" != bullseye ]; then
    WANT+=(usr/bin/dropwatch)
    TOP_PACKAGES+=(dropwatch)
fi
# The OVN variant (scenario ovn): a real chassis (ovn-controller) with its central part
# (NB and SB databases, ovn-northd) in the guest, and a NIC so a Prometheus on the host
# can scrape the exporter.
variant=base
if [ "${PP_VM_OVN:-}" = 1 ]; then
    variant=base-ovn
    MODULES="$MODULES virtio_net"
    WANT+=(
        usr/bin/ovn-controller usr/bin/ovn-northd usr/bin/ovn-nbctl usr/bin/ovn-sbctl
        usr/bin/ovn-appctl usr/share/ovn/ovn-nb.ovsschema usr/share/ovn/ovn-sb.ovsschema
    )
    TOP_PACKAGES+=(ovn-host ovn-central ovn-common)
fi


ARGS=("$@")
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

# --- apt: the host's lists for the host's release, a private configuration otherwise ---

host_release=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
apt_opts=()
if [ "$RELEASE" != "$host_release" ]; then
    APT_DIR=$RDIR/apt
    apt_opts=(
        -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
        -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
        -o Dir::State::status=/dev/null
        # The sandbox user cannot write into a root-owned cache.
        -o APT::Sandbox::User=root
    )
fi
apt_get() { apt-get "${apt_opts[@]}" "$@"; }
apt_cache() { apt-cache "${apt_opts[@]}" "$@"; }

# private_sources: a sources.list for $RELEASE, made from the host's own Debian entries
# (`<host release>`, `-updates`, `-security`) with the release's name put in.
private_sources() {
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts="" uri suite
    [ -f "$keyring" ] && opts="[signed-by=$keyring] "
    # shellcheck disable=SC2016 # apt's format, not the shell's
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null \
        | sort -u | while read -r uri suite; do
            case $suite in
                "$host_release") echo "deb $opts$uri $RELEASE main" ;;
                "$host_release"-updates | "$host_release"-security)
                    echo "deb $opts$uri $RELEASE-${suite#"$host_release"-} main" ;;
            esac
        done
}

apt_update() {
    if [ ${#apt_opts[@]} -gt 0 ]; then
        mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    fi
    apt_get update -qq >&2
}

if [ ${#apt_opts[@]} -gt 0 ]; then
    sources=$(private_sources)
    if [ -z "$host_release" ] || [ -z "$sources" ]; then
        die "cannot name a mirror for $RELEASE: no Debian entries for the host's release" \
            "(${host_release:-unknown}) in its apt sources"
    fi
    if [ "$sources" != "$(cat "$APT_DIR/sources.list" 2>/dev/null)" ]; then
        mkdir -p "$APT_DIR"
        rm -rf "$APT_DIR/lists"
        echo "$sources" >"$APT_DIR/sources.list"
    fi
fi

# candidates PKG...: `name version` of each package's candidate, one apt-cache call for all
# (each call costs ~0.4 s of parsing the package lists).
candidates() {
    apt_cache policy "$@" 2>/dev/null | awk '
        /^[^ ].*:$/ { pkg = substr($0, 1, length($0) - 1); sub(/:amd64$/, "", pkg) }
        /^  Candidate:/ && $2 != "(none)" { print pkg, $2 }'
}

# --- host prerequisites -------------------------------------------------------------------

# A fresh machine (or release) may have empty apt lists; one update is enough for
# everything below.
if [ -z "$(candidates busybox-static)" ]; then
    log "apt lists for $RELEASE are empty: apt-get update"
    apt_update
fi
# Installed on the host (its own apt configuration).
host_install() {
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
command -v qemu-system-x86_64 >/dev/null || host_install qemu-system-x86
if $merged_usr && ! command -v xz >/dev/null; then host_install xz-utils; fi

# --- pick versions, derive the cache key --------------------------------------------------

kernel_pkg=${PP_VM_KERNEL:-$(apt_cache search --names-only "$kernel_re" \
    | awk '{ print $1 }' | sort -V | tail -n 1)}
[ -n "$kernel_pkg" ] || die "apt knows no $RELEASE cloud kernel ($kernel_re)"

versions=$(candidates "$kernel_pkg" "${TOP_PACKAGES[@]}")
for pkg in "$kernel_pkg" "${TOP_PACKAGES[@]}"; do
    grep -q "^$pkg " <<<"$versions" || die "no candidate version for $pkg"
done
key=$( { echo "$RELEASE $variant"; echo "$versions"; cat "$HERE/build-initramfs.sh" "$HERE/elfdeps.py"; } \
    | sha256sum | cut -c1-16)
BASE_DIR=$RDIR/$variant-$key
KVER=${kernel_pkg#linux-image-}

# --- base ---------------------------------------------------------------------------------

# cached_deb PKG VERSION: the file apt-get download left, <name>_<version, : as %3a>_<arch>.deb
cached_deb() { compgen -G "$DEBS/${1}_${2//:/%3a}_*.deb" | head -n 1 || true; }

# fetch PKG...: downloads what $DEBS lacks (one apt-get call) and unpacks each package into
# $pool/<name>.
fetch() {
    local pkg v deb wanted=() get=()
    for pkg; do [ -d "$pool/$pkg" ] || wanted+=("$pkg"); done
    [ ${#wanted[@]} -gt 0 ] || return 0
    local -A debs=()
    while read -r pkg v; do
        deb=$(cached_deb "$pkg" "$v")
        if [ -n "$deb" ]; then debs[$pkg]=$deb; else get+=("$pkg=$v"); fi
    done < <(candidates "${wanted[@]}")
    if [ ${#get[@]} -gt 0 ]; then
        log "downloading ${get[*]}"
        # The sandbox user cannot write into a root-owned cache; nothing here is installed.
        if ! (cd "$DEBS" && apt_get download -qq -o APT::Sandbox::User=root "${get[@]}" >&2); then
            # Stale apt lists name versions the mirror no longer has: refresh them once and
            # start over, since the versions (and so the cache key) may all change.
            [ -z "${PP_VM_APT_REFRESHED:-}" ] || die "cannot download ${get[*]}"
            log "download failed: apt-get update and start over"
            apt_update
            PP_VM_APT_REFRESHED=1 exec "$0" "${ARGS[@]}"
        fi
        for v in "${get[@]}"; do
            pkg=${v%%=*} v=${v#*=}
            debs[$pkg]=$(cached_deb "$pkg" "$v")
        done
    fi
    for pkg in "${wanted[@]}"; do
        [ -n "${debs[$pkg]:-}" ] || die "no candidate version for $pkg"
        dpkg -x "${debs[$pkg]}" "$pool/$pkg"
        used_debs+=("${debs[$pkg]}")
    done
}

# lib_depends PKG...: the library packages they depend on directly. Debian's shlibs put the
# provider of every soname a binary needs among them.
lib_depends() {
    apt_cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" \
        | awk '$1 ~ /Depends:$/ && $2 ~ /^(lib|zlib)/ { sub(/:any$/, "", $2); print $2 }' \
        | sort -u
}

used_debs=()
build_base() {
    local work=$BASE_DIR.tmp pkg rel
    rm -rf "$work"
    mkdir -p "$work/pool" "$DEBS"
    pool=$work/pool
    local root=$work/tree/root
    mkdir -p "$root"

    fetch "$kernel_pkg" "${TOP_PACKAGES[@]}"
    local bb=$pool/busybox-static/bin/busybox
    $merged_usr && bb=$pool/busybox-static/usr/bin/busybox
    # What alternatives would link at install time: private OVS libraries (bullseye) into
    # the library path, where the package's soname links point.
    local lib d
    for lib in "$pool"/openvswitch-common/usr/lib/openvswitch-common/lib*.so.*; do
        [ -e "$lib" ] || continue
        lib=${lib##*/}
        [ -e "$pool/openvswitch-common/usr/lib/x86_64-linux-gnu/$lib" ] \
            || ln -s "../openvswitch-common/$lib" "$pool/openvswitch-common/usr/lib/x86_64-linux-gnu/$lib"
    done
    if $merged_usr; then
        for d in bin sbin lib lib64; do
            mkdir -p "$root/usr/$d"
            ln -s "usr/$d" "$root/$d"
        done
    fi

    # Shared libraries: resolve, fetch the library dependencies of the packages that miss a
    # soname, repeat.
    local deps missing owners new round=0
    while :; do
        deps=$(python3 "$HERE/elfdeps.py" "$pool" "${WANT[@]}")
        missing=$(awk '$1 == "missing"' <<<"$deps")
        [ -z "$missing" ] && break
        round=$((round + 1))
        [ $round -le 6 ] || die "unresolved after $round rounds:"$'\n'"$missing"
        mapfile -t owners < <(awk '$3 != "-" { print $3 }' <<<"$missing" | sort -u)
        new=()
        if [ ${#owners[@]} -gt 0 ]; then
            for pkg in $(lib_depends "${owners[@]}"); do
                [ -d "$pool/$pkg" ] || new+=("$pkg")
            done
        fi
        [ ${#new[@]} -gt 0 ] || die "no package provides:"$'\n'"$missing"
        fetch "${new[@]}"
    done
    while read -r _ pkg rel; do
        mkdir -p "$root/$(dirname "$rel")"
        cp -a "$pool/$pkg/$rel" "$root/$rel"
    done < <(awk '$1 == "copy"' <<<"$deps")

    # Debian links ovs-vswitchd into /usr/sbin through alternatives, at install time.
    ln -s "../${vswitchd#usr/}" "$root/usr/sbin/ovs-vswitchd"
    # Busybox for every command no package file provides (the kernel runs /sbin/modprobe).
    local applet
    for applet in $("$bb" --list-full); do
        [ -e "$root/$applet" ] || [ -L "$root/$applet" ] && continue
        mkdir -p "$root/$(dirname "$applet")"
        ln -s /bin/busybox "$root/$applet"
    done

    # Kernel: the .deb ships no modules.dep and the host may have no kmod. A merged-/usr
    # kernel has usr/lib/modules and .ko.xz files: move and decompress them first.
    local kpool=$pool/$kernel_pkg
    if [ ! -d "$kpool/lib/modules" ] && [ -d "$kpool/usr/lib/modules" ]; then
        mkdir -p "$kpool/lib"
        mv "$kpool/usr/lib/modules" "$kpool/lib/modules"
    fi
    find "$kpool/lib/modules/$KVER" -name '*.ko.xz' -print0 | xargs -0 -r xz -d
    "$bb" depmod -b "$kpool" "$KVER"
    local mods
    mods=$(awk -v want="$MODULES $SCENARIO_MODULES" '
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
    for m in modules.builtin modules.order; do
        [ ! -f "$kpool/lib/modules/$KVER/$m" ] || cp "$kpool/lib/modules/$KVER/$m" "$root/lib/modules/$KVER/"
    done
    "$bb" depmod -b "$root" "$KVER"
    log "modules: $(echo "$mods" | sed 's,.*/,,; s,\.ko$,,' | tr '\n' ' ')"

    mkdir -p "$root"/{proc,sys,dev,run,tmp,root,etc/openvswitch,var/log/openvswitch}
    ln -s ../run "$root/var/run"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    # /init loads these; their dependencies come from modules.dep.
    echo "$MODULES" >"$root/etc/guest-modules"
    echo "$RELEASE" >"$root/etc/guest-release"
    # OVS daemons warn at start without these; the guest resolves no names.
    : >"$root/etc/resolv.conf"
    echo "127.0.0.1 localhost" >"$root/etc/hosts"

    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) \
        | gzip -n -6 >"$work/base.cpio.gz"
    cp "$kpool/boot/vmlinuz-$KVER" "$work/vmlinuz"
    {
        echo "$versions"
        echo "# every package in the base:"
        # shellcheck disable=SC2046 # one name per directory
        candidates $(ls "$pool")
    } >"$work/versions.txt"
    rm -rf "$pool"
    mv "$work" "$BASE_DIR"
    # Keep the cache to one base per release and variant and the packages they were made
    # of (and drop what the layout before releases left: $PP_VM_CACHE/base-*,
    # $PP_VM_CACHE/debs).
    local d other
    for d in "$RDIR"/base-* "$CACHE"/base-*; do
        case $d in
            "$BASE_DIR") continue ;;
            "$RDIR"/base-ovn-*) [ "$variant" = base-ovn ] || continue ;;
            "$RDIR"/base-*) [ "$variant" = base ] || continue ;;
        esac
        rm -rf "$d"
    done
    rm -rf "$CACHE/debs"
    # Packages the other variant's base lists stay too.
    other=$(cat "$RDIR"/base-*/debs.txt 2>/dev/null || true)
    printf '%s\n' "${used_debs[@]}" >"$BASE_DIR/debs.txt"
    for d in "$DEBS"/*.deb; do
        [[ " ${used_debs[*]} " == *" $d "* ]] || grep -qxF "$d" <<<"$other" || rm -f "$d"
    done
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

[ -x "$exporter" ] || die "no exporter binary at $exporter (tests/vm/run.sh builds it)"
[ -x "$pptraffic" ] || die "no pptraffic at $pptraffic (tests/vm/run.sh builds it)"
# A static binary runs on every release. A dynamically linked one runs when the base holds
# every library it loads, with the symbol versions it was linked against (a bookworm build
# needs GLIBC_2.34, which bullseye's glibc 2.31 lacks); check that here rather than as a
# cryptic failure in the guest.
missing=$(python3 "$HERE/elfdeps.py" "$BASE_DIR/tree" "$(realpath "$exporter")" \
    "$(realpath "$pptraffic")" | awk '$1 == "missing" { print $2 }')
[ -z "$missing" ] || die "the $RELEASE base lacks libraries (or versions) our binaries need:" \
    "${missing//$'\n'/ }" "(build them static: tests/vm/run.sh does by default)"

overlay_out=${overlay_out:-$RDIR/overlay.cpio.gz}
ov=$(mktemp -d)
trap 'rm -rf "$ov"' EXIT
# The kernel replaces an existing path whose type differs from the archive's entry: a
# directory bin/ in OVERLAY would remove the bin -> usr/bin link of a merged-/usr BASE (and
# /bin/busybox with it), so the binaries go where that link points.
bindir=bin
[ ! -L "$BASE_DIR/tree/root/bin" ] || bindir=$(readlink "$BASE_DIR/tree/root/bin")
mkdir -p "$ov/$bindir" "$ov/guest"
install -m 0755 "$exporter" "$ov/$bindir/packetpath-exporter"
install -m 0755 "$pptraffic" "$ov/$bindir/pptraffic"
# Debug builds carry ~60 MB of DWARF each: the kernel would unpack it under TCG on every
# boot. Symbols stay (backtraces still name functions).
if command -v strip >/dev/null; then
    strip --strip-debug "$ov/$bindir/packetpath-exporter" "$ov/$bindir/pptraffic"
fi
install -m 0755 "$HERE/guest/init" "$ov/init"
for f in "$HERE"/guest/*; do
    [ "$(basename "$f")" = init ] || install -m 0755 "$f" "$ov/guest/"
done
if [ -n "$guest_env" ]; then install -m 0644 "$guest_env" "$ov/guest/env"; else : >"$ov/guest/env"; fi
bb=$BASE_DIR/tree/root/bin/busybox
(cd "$ov" && find . -mindepth 1 | LC_ALL=C sort | "$bb" cpio -o -H newc 2>/dev/null) \
    | gzip -n -1 >"$overlay_out"
echo "OVERLAY=$overlay_out"
