#!/bin/sh
# Builds the Debian package from a binary built beforehand:
#
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
#   packaging/deb/build.sh target/x86_64-unknown-linux-gnu/release/packetpath-exporter OUTDIR
#
# writes OUTDIR/packetpath-exporter_<version>_amd64.deb: the binary in /usr/bin, the systemd
# unit of deploy/systemd (run from /usr/bin), the alert rules and dashboards under
# /usr/share/packetpath-exporter. No maintainer scripts: the service changes host settings,
# so it is enabled by hand (systemctl enable --now packetpath-exporter). dpkg-deb alone, so
# it builds on any Debian without further tools.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=$1
out=$2
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
name=packetpath-exporter
tree=$(mktemp -d)
chmod 0755 "$tree"
trap 'rm -rf "$tree"' EXIT

install -D -m 0755 "$binary" "$tree/usr/bin/$name"
install -d "$tree/usr/lib/systemd/system"
sed "s|^ExecStart=/usr/local/bin/$name|ExecStart=/usr/bin/$name|" \
    "$repo/deploy/systemd/$name.service" >"$tree/usr/lib/systemd/system/$name.service"
chmod 0644 "$tree/usr/lib/systemd/system/$name.service"
share=$tree/usr/share/$name
for f in packetpath.rules.yml packetpath.rules.yml.in thresholds.env; do
    install -D -m 0644 "$repo/alerts/$f" "$share/alerts/$f"
done
install -D -m 0755 "$repo/alerts/render.sh" "$share/alerts/render.sh"
for f in "$repo"/dashboards/*.json; do
    install -D -m 0644 "$f" "$share/dashboards/$(basename "$f")"
done
doc=$tree/usr/share/doc/$name
install -d "$doc"
install -m 0644 "$repo/README.md" "$doc/README.md"
cp -r "$repo/docs" "$doc/docs"
chmod -R u=rwX,go=rX "$doc/docs"
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: $name"
    echo
    echo "Files: *"
    echo "License: Apache-2.0"
    echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
} >"$doc/copyright"
install -d "$tree/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
cat >"$tree/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: amd64
Maintainer: packetpath-exporter developers <packetpath-exporter@localhost>
Section: net
Priority: optional
Installed-Size: $size
Recommends: openvswitch-switch
Description: Prometheus exporter for packet-path health on OVS/OVN compute nodes
 Tells where packets die between the Geneve tunnel and a VM's TAP: interface,
 conntrack, OVS datapath and drop-flow counters, conntrack-invalid reasons, the
 kernel's drop reasons, named by VM. Ships a systemd unit (not enabled), alert
 rules and Grafana dashboards under /usr/share/packetpath-exporter.
CONTROL
mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$tree" "$out/${name}_${version}_amd64.deb" >/dev/null
echo "$out/${name}_${version}_amd64.deb"
