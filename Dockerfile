# syntax=docker/dockerfile:1
#
# scp-pep container image.
#   docker build -t scp-pep .
#   docker run --rm -p 9191:9191 -p 9192:9192 scp-pep --help
#
# Stage 1 builds a release binary; stage 2 is a slim Debian runtime that runs
# it as a non-root user.

############################ builder ############################
FROM rust:1-bookworm AS builder

# protobuf-compiler: only needed if a build.rs compiles proto/ (tonic/prost
# build scripts look for `protoc`); harmless otherwise.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Everything `cargo build` reads. benches/ is needed because Cargo.toml declares
# [[bench]] targets and cargo refuses a manifest whose target paths are missing.
# build.r[s] is a glob so an (optional) build.rs is copied when it exists.
COPY Cargo.toml Cargo.lock build.r[s] ./
COPY src ./src
COPY migrations ./migrations
COPY proto ./proto
COPY policies ./policies
COPY benches ./benches

# --locked: fail instead of silently updating Cargo.lock.
# The cache mounts keep the registry and target/ between builds (BuildKit);
# the binary is copied out because target/ lives only in the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scp-pep \
 && install -D -m 0755 target/release/scp-pep /out/scp-pep

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: outbound TLS (JWKS / OIDC discovery over https).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 scp \
 && useradd --system --uid 10001 --gid scp --home-dir /var/lib/scp-pep \
      --no-create-home --shell /usr/sbin/nologin scp \
 && install -d -o scp -g scp -m 0750 /var/lib/scp-pep

COPY --from=builder /out/scp-pep /usr/local/bin/scp-pep
# Policies are read-only data owned by root; the service user can read them
# but not change them.
COPY policies /policies

# Writable working directory for the non-root user (e.g. the demo's SQLite file).
WORKDIR /var/lib/scp-pep
USER 10001:10001

# 9191 gRPC ext_authz (Envoy -> scp-pep), 9192 HTTP (health/metrics/admin API).
EXPOSE 9191 9192

# grpc.health.v1 on the ext_authz port, asked by the binary itself (the slim
# image has no curl or grpc_health_probe): exit 0 when SERVING (policy loaded,
# not draining), 1 otherwise. Set SCP_PEP_HEALTH_GRPC when grpc_listen is not
# reachable on 127.0.0.1:9191 inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["scp-pep", "health", "--timeout-s", "3"]
ENTRYPOINT ["scp-pep"]
