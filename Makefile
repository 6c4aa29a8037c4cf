# Tandem: every routine task is one named target.
#
#   make demo     build, start the local stack, run the demo, stop the stack
#   make test     every test suite (what CI runs)
#   make proto    regenerate Go and Python code from proto/
#   make bench    the side-by-side benchmark (not part of make test)
#
# Everything is installed into the repository (.venv, tools/node_modules,
# .tools/bin, bin/) or the usual caches (cargo, Go); nothing system-wide
# except what `make bench` may install with apt.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT      := $(abspath .)
VENV      := $(ROOT)/.venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
BUF       := $(ROOT)/tools/node_modules/.bin/buf
BIN       := $(ROOT)/bin
STAMP     := $(ROOT)/.make
# One cargo target dir for the service, the tests and the Python extension.
export CARGO_TARGET_DIR := $(ROOT)/compute-rs/target
# Quieter, reproducible builds on 2 cores.
export CARGO_TERM_PROGRESS_WHEN := never
export GOFLAGS := -buildvcs=false

COMPUTE_BIN := $(CARGO_TARGET_DIR)/release/tandem-compute
ORCH_BIN    := $(BIN)/tandem-orchestrator
NATS_BIN    := $(BIN)/nats-server

# The integration harness finds the binaries through these.
export TANDEM_COMPUTE_BIN := $(COMPUTE_BIN)
export TANDEM_ACME_COMPUTE_BIN := $(CARGO_TARGET_DIR)/release/acme-compute
export TANDEM_ORCHESTRATOR_BIN := $(ORCH_BIN)
export TANDEM_NATS_SERVER_BIN := $(NATS_BIN)

RUST_SRC := $(shell find compute-rs/crates -name '*.rs' -o -name Cargo.toml -o -name build.rs 2>/dev/null) compute-rs/Cargo.toml compute-rs/Cargo.lock $(wildcard proto/tandem/v1/*.proto)
GO_SRC   := $(shell find orchestrator-go -name '*.go' -not -path '*/testdata/*' 2>/dev/null) orchestrator-go/go.mod orchestrator-go/go.sum
PY_SRC   := $(shell find pyclient -name '*.py' -o -name '*.pyi' -o -name pyproject.toml -o -name py.typed 2>/dev/null | grep -v '/build/')

.PHONY: help
help:
	@echo "make demo   - build everything, start the local stack, run the demo, stop"
	@echo "make test   - run every test suite (CI runs this)"
	@echo "make lint   - every linter (part of make test)"
	@echo "make proto  - regenerate Go/Python code from proto/"
	@echo "make bench  - side-by-side benchmark (Tandem vs Celery+Redis)"
	@echo "make fuzz   - fuzz the compute decoders for a bounded time"
	@echo "make up     - start the local stack in the foreground (Ctrl-C stops)"
	@echo "make up SECURE=1 - the same with TLS, mTLS and tokens (prints TANDEM_CA, TANDEM_TOKEN)"

# ---------------------------------------------------------------- set-up

$(STAMP):
	mkdir -p $(STAMP)

$(STAMP)/venv: tools/requirements-dev.txt | $(STAMP)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r tools/requirements-dev.txt
	touch $@

$(STAMP)/npm: tools/package.json tools/package-lock.json | $(STAMP)
	# npm ci rejects the lock file buf's per-platform optional packages produce
	# (npm 11); install honours the lock file and leaves it unchanged.
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP)/gotools: orchestrator-go/go.mod orchestrator-go/go.sum | $(STAMP)
	mkdir -p .tools/bin $(BIN)
	cd orchestrator-go && go build -o ../.tools/bin/ \
		google.golang.org/protobuf/cmd/protoc-gen-go \
		google.golang.org/grpc/cmd/protoc-gen-go-grpc
	touch $@

# Debian's Chromium, for the dashboard's browser test (Playwright drives it;
# no browser is downloaded). Needs root (CI is root) or a chromium on PATH.
$(STAMP)/chromium: | $(STAMP)
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
	touch $@

.PHONY: setup
setup: $(STAMP)/venv $(STAMP)/npm $(STAMP)/gotools

# ---------------------------------------------------------------- contracts

PROTO_FILES := $(wildcard proto/tandem/v1/*.proto)

# Generates into $(1): Go under $(1)/go, Python under $(1)/py.
define gen_proto
	rm -rf $(1) && mkdir -p $(1)/go $(1)/py
	$(BUF) generate --template '{"version":"v2","plugins":[{"local":".tools/bin/protoc-gen-go","out":"$(1)/go","opt":"paths=source_relative"},{"local":".tools/bin/protoc-gen-go-grpc","out":"$(1)/go","opt":"paths=source_relative"}]}'
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(1)/py --pyi_out=$(1)/py --grpc_python_out=$(1)/py $(PROTO_FILES)
endef

.PHONY: proto
proto: $(STAMP)/venv $(STAMP)/npm $(STAMP)/gotools
	$(call gen_proto,$(ROOT)/.make/gen)
	rm -rf orchestrator-go/gen && mkdir -p orchestrator-go/gen && cp -r .make/gen/go/. orchestrator-go/gen/
	find pyclient/python/tandem/v1 -name '*_pb2*' -delete
	cp .make/gen/py/tandem/v1/* pyclient/python/tandem/v1/

# Lint, breaking-change check against the released contract
# (proto/api-lock.binpb, refreshed on purpose with `make proto-lock`), and a
# check that the committed generated code matches proto/.
.PHONY: proto-check
proto-check: $(STAMP)/venv $(STAMP)/npm $(STAMP)/gotools
	$(BUF) lint
	$(BUF) breaking --against proto/api-lock.binpb
	$(call gen_proto,$(ROOT)/.make/gen-check)
	diff -r .make/gen-check/go orchestrator-go/gen || { echo "orchestrator-go/gen is stale: run make proto"; exit 1; }
	diff -r -x '__init__.py' -x '__pycache__' .make/gen-check/py/tandem/v1 pyclient/python/tandem/v1 || { echo "pyclient generated code is stale: run make proto"; exit 1; }
	@echo "proto: lint, breaking and freshness checks passed"

.PHONY: proto-lock
proto-lock: $(STAMP)/npm
	$(BUF) build -o proto/api-lock.binpb

# ---------------------------------------------------------------- build

# tandem-compute, and acme-compute: the example of a team's own compute
# binary with an extra Rust op (tests/test_native_ops.py runs it in a stack).
$(COMPUTE_BIN): $(RUST_SRC)
	cd compute-rs && cargo build --release --locked -p tandem-compute -p acme-compute

$(ORCH_BIN): $(GO_SRC)
	mkdir -p $(BIN)
	cd orchestrator-go && go build -o $(ORCH_BIN) ./cmd/tandem-orchestrator

$(NATS_BIN): orchestrator-go/go.mod orchestrator-go/go.sum
	mkdir -p $(BIN)
	cd orchestrator-go && go build -o $(NATS_BIN) github.com/nats-io/nats-server/v2

# The Python package (gRPC client + the native module built by maturin from
# compute-rs/crates/tandem-py), installed into .venv the way users install it.
$(STAMP)/pyclient: $(STAMP)/venv $(PY_SRC) $(RUST_SRC) | $(STAMP)
	PATH="$(VENV)/bin:$$PATH" $(PIP) install -q --no-build-isolation --force-reinstall --no-deps ./pyclient
	PATH="$(VENV)/bin:$$PATH" $(PIP) install -q --no-build-isolation ./pyclient
	touch $@

.PHONY: build
build: $(COMPUTE_BIN) $(ORCH_BIN) $(NATS_BIN) $(STAMP)/pyclient

# ---------------------------------------------------------------- test

.PHONY: test test-rust test-go test-client test-e2e test-deploy test-bench
test: proto-check lint test-rust test-go test-client test-e2e test-deploy test-bench
	@echo "make test: every suite passed"

# ---------------------------------------------------------------- lint
#
# Every linter the project's config declares, run: warnings are failures.
# Bans live in config (compute-rs/.clippy.toml, compute-rs/deny.toml,
# pyclient/pyproject.toml), not in memory.

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(ROOT)/.tools/bin/cargo-deny

$(CARGO_DENY):
	cargo install --quiet --locked --root $(ROOT)/.tools cargo-deny@$(CARGO_DENY_VERSION)

.PHONY: lint lint-rust lint-go lint-python
lint: lint-go lint-python lint-rust
	@echo "make lint: clean"

lint-rust: $(CARGO_DENY)
	cd compute-rs && cargo fmt --all --check
	cd compute-rs && cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings
	cd compute-rs && $(CARGO_DENY) --offline check licenses bans

lint-go:
	@out=$$(cd orchestrator-go && gofmt -l cmd internal); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	cd orchestrator-go && go vet ./... && go run $(STATICCHECK) ./...

lint-python: $(STAMP)/pyclient
	$(VENV)/bin/ruff check pyclient bench deploy/tests tests
	$(VENV)/bin/ruff format --check pyclient bench deploy/tests tests
	$(VENV)/bin/mypy --config-file pyclient/pyproject.toml pyclient/python/tandem
	$(VENV)/bin/mypy --config-file bench/mypy.ini bench
	$(VENV)/bin/mypy --config-file deploy/tests/mypy.ini deploy/tests
	$(VENV)/bin/mypy --config-file tests/mypy.ini tests

test-rust:
	cd compute-rs && cargo test --release --locked --workspace

test-go: $(NATS_BIN)
	cd orchestrator-go && go test -count=1 -timeout 15m ./...

test-client: $(STAMP)/pyclient
	$(VENV)/bin/pytest -q pyclient/tests

test-e2e: build $(STAMP)/chromium
	$(VENV)/bin/pytest -q tests

# promtool checks the alert rules, their unit tests and the scrape config
# (deploy/prometheus); built from the Go module proxy at a pinned release.
PROMTOOL_VERSION := v0.316.0

.tools/bin/promtool:
	mkdir -p .tools/bin
	GOBIN=$(ROOT)/.tools/bin GOFLAGS="-mod=mod -buildvcs=false" go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

# Needs the binaries and the installed package: its checks start real processes.
test-deploy: build .tools/bin/promtool
	$(VENV)/bin/pytest -q deploy/tests

# The benchmark harness's own code (workloads, parsing, report, the issue-15
# targets), and its issue-15 parts run for real at tiny sizes (the taskiq
# peer, a depth run of 300 jobs): not the benchmark, no timing asserted.
test-bench: build
	$(VENV)/bin/pytest -q bench/tests

# ---------------------------------------------------------------- run

.PHONY: demo up
# SECURE=1: TLS on every hop, mTLS to compute, bearer tokens (prints TANDEM_CA, TANDEM_TOKEN).
SECURE_FLAG := $(if $(filter 1 true yes,$(SECURE)),--secure)
demo: build
	$(PY) -m tandem.demo --compute-bin $(COMPUTE_BIN) --orchestrator-bin $(ORCH_BIN) $(SECURE_FLAG)

up: build
	$(PY) -m tandem.demo --compute-bin $(COMPUTE_BIN) --orchestrator-bin $(ORCH_BIN) --serve $(SECURE_FLAG)

.PHONY: bench fuzz
# BENCH_DEPTH=1000000 for the issue-15 depth figure (default 200000);
# BENCH_DEPTH_DURABILITY=always,interval runs it in both modes (default interval).
bench: build
	BENCH_DEPTH="$(BENCH_DEPTH)" BENCH_DEPTH_DURABILITY="$(BENCH_DEPTH_DURABILITY)" $(PY) bench/run.py $(BENCH_ARGS)

fuzz:
	cd compute-rs && cargo test --release -p tandem-core --features fuzz-long --test fuzz

.PHONY: clean
clean:
	rm -rf $(STAMP) $(BIN) .tools
