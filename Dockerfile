# packetpath-exporter image: a static binary on an empty base, run as nobody.
#
# From source (needs a registry with a Rust image):
#   buildah bud -t packetpath-exporter .          (or: docker build -t packetpath-exporter .)
# From a binary built beforehand, with no registry at all:
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
#   cp target/x86_64-unknown-linux-gnu/release/packetpath-exporter .
#   buildah bud --target prebuilt -t packetpath-exporter .
#
# Run it on the host network with only CAP_NET_ADMIN (netlink statistics, ctnetlink, and
# the conntrack_invalid collector's NFLOG group and sysctls); it needs no writable root:
#   podman run --network host --read-only --cap-drop=all --cap-add=NET_ADMIN packetpath-exporter
# conntrack_invalid writes its state file under /run: give it a tmpfs there (--tmpfs /run)
# or point --collector.conntrack_invalid.state-file at a volume.

ARG RUST_IMAGE=docker.io/library/rust:1.85-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
    && cp target/x86_64-unknown-linux-gnu/release/packetpath-exporter /packetpath-exporter

# The prebuilt binary from the build context (see above).
FROM scratch AS prebuilt
COPY packetpath-exporter /packetpath-exporter
USER 65534:65534
EXPOSE 9479
ENTRYPOINT ["/packetpath-exporter"]

FROM scratch AS runtime
COPY --from=build /packetpath-exporter /packetpath-exporter
USER 65534:65534
EXPOSE 9479
ENTRYPOINT ["/packetpath-exporter"]
