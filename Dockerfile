# syntax=docker/dockerfile:1
# Rustronaut's images for people who build with Docker, BuildKit or Buildah:
#
#   docker build --target operator -t rustronaut/operator:dev .
#   docker build --target gateway  -t rustronaut/gateway:dev  .
#   docker build --target connector -t rustronaut/connector:dev .
#   docker build --target console  -t rustronaut/console:dev  .
#
# The same images are built without a container engine by `make images`
# (e2e/src/image.rs: the binaries, the glibc libraries they link, CA certificates and the
# nonroot user 65532 in one layer). e2e/tests/images.rs checks that both builds name the same
# binaries, user and entrypoint, so what runs in the tests is what this file ships.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The gateway is built with profile-guided optimisation, from the profile committed beside
# gateway/pgo/cargo.sh (why, and how it is trained: that script), in target/pgo.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rustronaut-operator -p rustronaut-tunnel -p rustronaut-console --bins \
 && gateway/pgo/cargo.sh --locked -p rustronaut-gateway --bins \
 && mkdir -p /out \
 && cp target/release/rustronaut-operator target/pgo/release/rustronaut-gateway target/release/rustronaut-tunnel target/release/rustronaut-console /out/

# Runtime base: glibc, libgcc, CA certificates and the nonroot user (65532), nothing else (no shell).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG REVISION=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/rustronaut/rustronaut" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS operator
LABEL org.opencontainers.image.title="rustronaut-operator"
COPY --from=build /out/rustronaut-operator /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rustronaut-operator"]

# The gateway image also carries the tunnel hub: the operator runs hub pods from it.
FROM runtime AS gateway
LABEL org.opencontainers.image.title="rustronaut-gateway"
COPY --from=build /out/rustronaut-gateway /out/rustronaut-tunnel /usr/local/bin/
# glibc's malloc for rustronaut-tunnel: a fixed mmap threshold, so tunnel connections' buffers
# are returned when they close (e2e/src/image.rs, TUNNEL_MALLOC_ENV).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rustronaut-gateway"]

# The remote-site connector alone (docs/tunnel.md, "Running a site connector").
FROM runtime AS connector
LABEL org.opencontainers.image.title="rustronaut-connector"
COPY --from=build /out/rustronaut-tunnel /usr/local/bin/
# glibc's malloc for rustronaut-tunnel: a fixed mmap threshold, so tunnel connections' buffers
# are returned when they close (e2e/src/image.rs, TUNNEL_MALLOC_ENV).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rustronaut-tunnel"]

# The web console (docs/console.md).
FROM runtime AS console
LABEL org.opencontainers.image.title="rustronaut-console"
COPY --from=build /out/rustronaut-console /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rustronaut-console"]
