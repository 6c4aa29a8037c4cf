# syntax=docker/dockerfile:1
#
# tandem-orchestrator: the Go job service.
# Build context: the repository root (`docker compose build orchestrator`, or
# `docker build -f deploy/orchestrator.Dockerfile .`).

# --- build -------------------------------------------------------------------
FROM golang:1.26.8-trixie AS build
# GOTOOLCHAIN=local: build with this image's Go, never download another.
ENV GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# The image's health check: a static gRPC health client, pinned.
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.61
RUN go install -trimpath -ldflags="-s -w" \
      "github.com/grpc-ecosystem/grpc-health-probe@${GRPC_HEALTH_PROBE_VERSION}"

WORKDIR /src/orchestrator-go
# Dependencies first: this layer is reused until go.mod or go.sum changes.
COPY orchestrator-go/go.mod orchestrator-go/go.sum ./
RUN go mod download
# Sources (generated code in gen/ is committed, so no protoc step here).
COPY orchestrator-go/ ./
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /out/tandem-orchestrator ./cmd/tandem-orchestrator

# --- runtime -----------------------------------------------------------------
FROM debian:13-slim
RUN groupadd --system --gid 10001 tandem \
 && useradd --system --uid 10001 --gid tandem --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tandem \
 && install -d -o tandem -g tandem -m 0750 /var/lib/tandem /certs
COPY --from=build /go/bin/grpc-health-probe /usr/local/bin/grpc-health-probe
COPY --from=build /out/tandem-orchestrator /usr/local/bin/tandem-orchestrator

# /certs: the mount point of docker-compose.yml's `certs` volume. The `certs`
# job (this image, uid 10001) mounts it first, so the new volume takes this
# folder's owner and can be written by dev-certs without root.
# Inside a container the service must listen on every interface; the data dir
# is only used by the embedded nats-server, which docker-compose.yml never
# starts (it always sets TANDEM_ORCH_NATS_URL).
ENV TANDEM_ORCH_LISTEN=0.0.0.0:50051 \
    TANDEM_ORCH_METRICS_LISTEN=0.0.0.0:9101 \
    TANDEM_ORCH_DATA_DIR=/var/lib/tandem
EXPOSE 50051 9101
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/grpc-health-probe", "-addr=127.0.0.1:50051"]
ENTRYPOINT ["/usr/local/bin/tandem-orchestrator"]
