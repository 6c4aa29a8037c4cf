# syntax=docker/dockerfile:1
#
# The integration test runner: Python with the `tandem` package (client, CLI
# and the native module) installed from a wheel built here, the pinned test
# tools, and tests/. docker-compose.yml runs it as the `tests` service
# (TANDEM_TARGET=compose), pointed at the stack's services.
# Build context: the repository root.

# --- the Rust toolchain, copied into the wheel builder ----------------------
FROM rust:1.95.0-slim-trixie AS rust

# --- crates.io dependencies (same stage as in compute.Dockerfile) -----------
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

# --- the wheel: maturin builds pyclient with compute-rs/crates/tandem-py -----
# The extension is built for one CPython version (no abi3), so this stage uses
# the same Python image as the runtime stage below.
FROM python:3.11-slim-trixie AS wheel
# A C compiler and libc headers: the Rust linker driver and crates with C parts.
# Package versions follow the pinned Debian release of the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=deps /usr/local/cargo/registry /usr/local/cargo/registry
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    CARGO_TERM_PROGRESS_WHEN=never
WORKDIR /src
# maturin at the version pinned for developers.
COPY tools/requirements-dev.txt tools/
RUN grep -E '^maturin==' tools/requirements-dev.txt > /tmp/maturin.txt \
 && pip install --no-cache-dir -r /tmp/maturin.txt
COPY proto/ proto/
COPY compute-rs/ compute-rs/
COPY pyclient/ pyclient/
WORKDIR /src/pyclient
RUN --mount=type=cache,target=/src/compute-rs/target,sharing=locked \
    CARGO_TARGET_DIR=/src/compute-rs/target \
    maturin build --release --locked --offline --interpreter python3 --out /wheels

# --- runtime -----------------------------------------------------------------
FROM python:3.11-slim-trixie
RUN groupadd --system --gid 10001 tandem \
 && useradd --system --uid 10001 --gid tandem --create-home --home-dir /home/tandem \
      --shell /usr/sbin/nologin tandem
WORKDIR /app
# The test tools at the versions developers use (tools/requirements-dev.txt),
# before the package and the tests so this layer is reused across code changes.
COPY tools/requirements-dev.txt tools/
RUN pip install --no-cache-dir -r tools/requirements-dev.txt
COPY --from=wheel /wheels/ /wheels/
RUN pip install --no-cache-dir /wheels/*.whl
COPY tests/ tests/
COPY testdata/ testdata/

USER 10001:10001
# Compose mode: the harness starts no processes; it reads the service
# addresses below (docker-compose.yml sets them to the compose service names).
ENV TANDEM_TARGET=compose \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTEST_ADDOPTS="-p no:cacheprovider"
# A one-shot runner: it has no long-running state to probe.
HEALTHCHECK NONE
CMD ["pytest", "tests"]
