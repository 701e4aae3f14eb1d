# syntax=docker/dockerfile:1
#
# Roomcast gateway image: a static-enough Rust binary on distroless.
#
#   docker build -t roomcast:dev .
#   docker run --rm -p 8080:8080 -e ROOMCAST_REDIS_URL=redis://host.docker.internal:6379 \
#     -e ROOMCAST_JWT_SECRET=dev-only roomcast:dev
#
# Needs BuildKit (the default builder of current Docker and of buildx) for the cache
# mounts. Pin both base images by digest in CI (e.g. with Renovate) for reproducible
# builds; tags are used here so the file stays readable.

ARG RUST_VERSION=1

# ---- build --------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# The whole workspace is needed: Cargo resolves every member (gateway, shared,
# loadtest) even when building one package, and the gateway embeds redis/*.lua with
# include_str!. .dockerignore keeps target/, .git/ and the deployment files out.
COPY . .

# --locked: build exactly the reviewed Cargo.lock. The caches keep the registry and
# target dir between builds; the binary is copied out because a cache mount is not
# part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p roomcast-gateway \
    && install -D -m 0755 target/release/roomcast /out/roomcast

# ---- runtime ------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, libssl, CA certificates and tzdata, and nothing else:
# no shell, no package manager, no curl. Kubernetes probes are therefore HTTP probes
# (k8s/base/deployment.yaml), and there is no HEALTHCHECK here, which would need a
# program inside the image to run. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="roomcast" \
      org.opencontainers.image.description="Roomcast realtime gateway: WebSocket sessions fanned out through Redis" \
      org.opencontainers.image.source="https://github.com/roomcast/roomcast" \
      org.opencontainers.image.url="https://github.com/roomcast/roomcast" \
      org.opencontainers.image.documentation="https://github.com/roomcast/roomcast/blob/main/docs/OPERATIONS.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Roomcast" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

COPY --from=builder --chown=0:0 --chmod=0755 /out/roomcast /roomcast

# Numeric ids, so Kubernetes' runAsNonRoot can verify them without /etc/passwd.
USER 65532:65532

# WebSocket, REST, health and metrics all share this port (ROOMCAST_LISTEN).
EXPOSE 8080 9090

# SIGTERM starts the drain: readiness 503, close 1001 to clients, exit within
# ROOMCAST_SHUTDOWN_GRACE. The binary is PID 1 (exec form), so it gets the signal.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/roomcast"]
CMD ["serve"]
