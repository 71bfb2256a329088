#!/usr/bin/env bash
# What TLS and basic auth cost a scrape: packetpath-exporter against Debian's
# prometheus-node-exporter, both given the same exporter-toolkit web config file, in three
# modes: plain HTTP, TLS, TLS + basic auth (bcrypt cost 10). Every scrape is a new curl, so
# a new connection and a full TLS handshake, as Prometheus does when the keep-alive
# connection has gone idle. Also: the first authenticated scrape after start (bcrypt
# actually runs) against the rest (both exporters remember a verified password).
#
# Usage (from the repository root):  bench/compare-web-config.sh
# Environment overrides:
#   N=200        measured scrapes per exporter and mode (alternating, sequential)
#   WARMUP=5     unmeasured scrapes before measuring (after the first-scrape probe)
#   NODE_EXPORTER=prometheus-node-exporter (or .cache/node-exporter/usr/bin/... from
#                tests/run.sh)
# Needs curl, openssl, htpasswd (apache2-utils) and a Rust toolchain; no root.
set -euo pipefail

N=${N:-200}
WARMUP=${WARMUP:-5}

die() { echo "compare-web-config: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
NODE_EXPORTER=${NODE_EXPORTER:-$(command -v prometheus-node-exporter || echo "$repo/.cache/node-exporter/usr/bin/prometheus-node-exporter")}
[[ -x $NODE_EXPORTER ]] || die "node_exporter not found (apt install prometheus-node-exporter, or run tests/run.sh)"
for c in curl openssl htpasswd; do command -v $c >/dev/null || die "$c not found"; done

echo "==> cargo build --release" >&2
cargo build --release -q
OUR_BIN=$repo/target/release/packetpath-exporter

work=$(mktemp -d /tmp/ppweb.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- certificates, password, the three files ----------------------------------------
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=bench-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out server.key 2>/dev/null
    openssl req -new -key server.key -subj /CN=localhost -out server.csr 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext -out server.crt 2>/dev/null
    hash=$(htpasswd -nbBC 10 prometheus bench-Passw0rd | cut -d: -f2)
    : > plain.yml
    printf 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n' > tls.yml
    { cat tls.yml; printf 'basic_auth_users:\n  prometheus: %s\n' "$hash"; } > auth.yml
)

start() { # name port mode -> pid
    local port=$2 mode=$3
    case $1 in
        ours) "$OUR_BIN" --web.listen-address=127.0.0.1:$port --web.config.file="$work/$mode.yml" \
                  --collector.disable-defaults --collector.interfaces 2>>"$work/ours.log" & ;;
        node) "$NODE_EXPORTER" --web.listen-address=127.0.0.1:$port --web.config.file="$work/$mode.yml" \
                  --collector.disable-defaults --collector.netdev --runtime.gomaxprocs=1 2>>"$work/node.log" & ;;
    esac
    pids+=($!)
}

scrape() { # port mode -> seconds
    local args=(-s -o /dev/null -w '%{time_total}\n' --max-time 10)
    local scheme=http
    [[ $2 != plain ]] && { scheme=https; args+=(--cacert "$work/ca.crt"); }
    [[ $2 == auth ]] && args+=(-u prometheus:bench-Passw0rd)
    curl "${args[@]}" "$scheme://127.0.0.1:$1/metrics"
}

ready() { # port mode
    for _ in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.crt" \
            -u prometheus:bench-Passw0rd "$([[ $2 == plain ]] && echo http || echo https)://127.0.0.1:$1/metrics") == 200 ]] && return
        sleep 0.05
    done
    die "exporter on port $1 ($2) did not answer"
}

stats() { # file -> "median p90" in ms, nearest rank
    sort -g "$1" | awk '{ v[NR] = $1 } END {
        m = v[int((NR + 1) / 2)]; p = v[int(NR * 0.9 + 0.999)];
        printf "%.2f %.2f\n", m * 1000, p * 1000 }'
}

echo "| exporter | mode | first scrape | median scrape | p90 scrape |"
echo "|---|---|---:|---:|---:|"
port=19700
for mode in plain tls auth; do
    port=$((port + 2))
    start ours $port "$mode"
    start node $((port + 1)) "$mode"
    # The first scrape of each: for "auth" bcrypt runs; readiness is probed on the port's
    # TCP accept only, so that it is not the first authenticated request.
    for p in $port $((port + 1)); do
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
            sleep 0.05
        done
    done
    first_ours=$(scrape $port "$mode")
    first_node=$(scrape $((port + 1)) "$mode")
    ready $port "$mode"; ready $((port + 1)) "$mode"
    for _ in $(seq "$WARMUP"); do scrape $port "$mode" >/dev/null; scrape $((port + 1)) "$mode" >/dev/null; done
    : > "$work/ours-$mode"; : > "$work/node-$mode"
    for _ in $(seq "$N"); do
        scrape $port "$mode" >> "$work/ours-$mode"
        scrape $((port + 1)) "$mode" >> "$work/node-$mode"
    done
    read -r m p < <(stats "$work/ours-$mode")
    printf '| packetpath-exporter | %s | %.2f ms | %s ms | %s ms |\n' "$mode" "$(awk -v s="$first_ours" 'BEGIN { print s * 1000 }')" "$m" "$p"
    read -r m p < <(stats "$work/node-$mode")
    printf '| node_exporter | %s | %.2f ms | %s ms | %s ms |\n' "$mode" "$(awk -v s="$first_node" 'BEGIN { print s * 1000 }')" "$m" "$p"
done
