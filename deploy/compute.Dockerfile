# syntax=docker/dockerfile:1
#
# tandem-compute: the Rust gRPC transform service.
# Build context: the repository root (`docker compose build compute`, or
# `docker build -f deploy/compute.Dockerfile .`).

# --- grpc-health-probe, the image's health check (a static Go binary) -------
FROM golang:1.26.8-trixie AS probe
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.61
ENV GOTOOLCHAIN=local CGO_ENABLED=0
RUN go install -trimpath -ldflags="-s -w" \
      "github.com/grpc-ecosystem/grpc-health-probe@${GRPC_HEALTH_PROBE_VERSION}"

# --- crates.io dependencies ---------------------------------------------------
# Only the workspace manifests and the lock file, with empty stand-ins for the
# sources (deploy/cargo-stubs.sh): this stage, every crate downloaded, is reused
# until a manifest or Cargo.lock changes. deploy/tests checks that every crate
# of the workspace is listed here.
FROM rust:1.95.0-slim-trixie AS deps
WORKDIR /src/compute-rs
COPY --chmod=0755 deploy/cargo-stubs.sh /usr/local/bin/cargo-stubs
COPY compute-rs/Cargo.toml compute-rs/Cargo.lock ./
COPY compute-rs/crates/tandem-proto/Cargo.toml crates/tandem-proto/
COPY compute-rs/crates/tandem-core/Cargo.toml crates/tandem-core/
COPY compute-rs/crates/tandem-compute/Cargo.toml crates/tandem-compute/
COPY compute-rs/crates/tandem-py/Cargo.toml crates/tandem-py/
COPY compute-rs/crates/example-acme-compute/Cargo.toml crates/example-acme-compute/
RUN cargo-stubs && cargo fetch --locked

# --- build -------------------------------------------------------------------
FROM rust:1.95.0-slim-trixie AS build
ENV CARGO_TERM_PROGRESS_WHEN=never
COPY --from=deps /usr/local/cargo/registry /usr/local/cargo/registry
# The contracts (read by tandem-proto's build.rs as ../../../proto), then the
# workspace.
COPY proto/ /src/proto/
COPY compute-rs/ /src/compute-rs/
WORKDIR /src/compute-rs
RUN --mount=type=cache,target=/src/compute-rs/target,sharing=locked \
    cargo build --release --locked --offline -p tandem-compute \
 && install -D -m 0755 target/release/tandem-compute /out/tandem-compute

# --- runtime -----------------------------------------------------------------
FROM debian:13-slim
RUN groupadd --system --gid 10001 tandem \
 && useradd --system --uid 10001 --gid tandem --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tandem
COPY --from=probe /go/bin/grpc-health-probe /usr/local/bin/grpc-health-probe
COPY --from=build /out/tandem-compute /usr/local/bin/tandem-compute

# Inside a container the service must listen on every interface; docker-compose.yml
# publishes no compute port on the host.
ENV TANDEM_COMPUTE_LISTEN=0.0.0.0:50052 \
    TANDEM_COMPUTE_METRICS_LISTEN=0.0.0.0:9102
EXPOSE 50052 9102
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/grpc-health-probe", "-addr=127.0.0.1:50052"]
ENTRYPOINT ["/usr/local/bin/tandem-compute"]
