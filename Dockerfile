# egress-warden: one static binary in an otherwise empty image.
#
#   docker build -t egress-warden .                     # from source (needs the Rust image)
#   scripts/build-image                                 # from a binary built here (no registry needed)
#
# The runtime image holds only /egress-warden: the warden resolves names itself (no NSS), never
# terminates TLS (no CA roots) and runs no other program (no shell). It runs as an unprivileged
# user by default; capture (CAP_NET_ADMIN) and termination (CAP_KILL) are granted by the
# deployment (see examples/docker and charts/), never baked in.

ARG RUST_IMAGE=rust:1.95-slim-bookworm

# The image, minus its binary.
FROM scratch AS base
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="egress-warden" \
      org.opencontainers.image.description="Egress-control sidecar for agent sandboxes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="https://github.com/egress-warden/egress-warden"
USER 65532:65532
ENTRYPOINT ["/egress-warden"]
CMD ["--help"]

# From a static binary built outside Docker (scripts/build-static). This stage comes first so
# that `--target prebuilt` builds with the classic builder too, without the Rust image.
FROM base AS prebuilt
COPY target/x86_64-unknown-linux-gnu/release/egress-warden /egress-warden

# From source: a static binary (glibc, crt-static).
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu

FROM base AS image
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/egress-warden /egress-warden
