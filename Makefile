# The two commands a user needs: `make run` and `make test`. Both build .venv from pip first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint typecheck unit e2e envoy-config proto clean

# xds-protos (Envoy's API) and opentelemetry-proto both ship opentelemetry/proto/*_pb2.py; whichever
# pip installs last wins, and xds-protos' older copy breaks the OTLP exporters. Reinstall
# opentelemetry-proto's own files last (the Dockerfile does the same).
OTEL_PROTO_FIX = $(BIN)/pip install --quiet --no-deps --force-reinstall \
	"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(OTEL_PROTO_FIX)
	touch $(STAMP)

# make run's configuration: local defaults with the development issuer (GATEWAY_CONFIG overrides).
CONFIG ?= $(or $(GATEWAY_CONFIG),config/local.yaml)

## run: the gateway on http://127.0.0.1:10000 (GATEWAY_PORT overrides); Ctrl-C stops it all
run: $(STAMP)
	$(BIN)/gatewayctl run --config $(CONFIG)

# Test files run in parallel, a whole file per pytest-xdist worker (each file's stacks stay in
# one process). Most of the end-to-end time is waiting (a 3-minute stream, drains, deferred
# closes), so two workers on two cores halve the run (TEST_WORKERS=0 runs serially).
TEST_WORKERS ?= 2

## test: lint, type-check, unit tests, end-to-end tests through real Envoy
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

## bench: overhead of the gateway vs plain Envoy and a no-op ext_proc, and of traces + metrics on vs off (~11 min;
##        not part of test; BENCH_ARGS="--setups gateway,gateway+otel" for the telemetry comparison alone)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway_extproc tests bench
	$(BIN)/ruff format --check gateway_extproc tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

## envoy-config: regenerate envoy/envoy.yaml (the bootstrap for the built-in config)
envoy-config: $(STAMP)
	$(BIN)/gatewayctl envoy-config --out envoy/envoy.yaml --workers 2 --ca-file /etc/ssl/certs/ca-certificates.crt

## proto: regenerate gateway_extproc/admin/_generated from proto/ (committed; never hand-edited)
proto: $(STAMP)
	$(BIN)/python -m gateway_extproc.admin.protogen

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
