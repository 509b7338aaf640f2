# The two commands a user needs: `make run` and `make test`. Both build .venv from uv.lock first:
# exact versions, every file checked against the lock's hashes (scripts/locked_install.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test browser bench profile lint imports typecheck unit e2e envoy-config proto lock deps-latest clean

$(STAMP): pyproject.toml uv.lock scripts/locked_install.py
	$(PYTHON) scripts/locked_install.py $(VENV) --extra dev
	touch $(STAMP)

## lock: re-resolve uv.lock from pyproject.toml's ranges, keeping every pin that still fits;
##       UPGRADE=redis moves one package (and what it needs) to its newest allowed release;
##       and bench/litellm.lock (the bench's LiteLLM, its own venv) from bench/litellm.in
lock:
	$(PYTHON) scripts/locked_install.py $(VENV) --uv-only
	$(BIN)/uv lock $(if $(UPGRADE),--upgrade-package $(UPGRADE))
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -o bench/litellm.lock bench/litellm.in

# The newest releases within pyproject.toml's ranges, in a throw-away virtualenv, against the unit
# tests: try an upgrade before a user meets it. Not part of `make test`; nothing here touches .venv.
LATEST := .venv-latest
## deps-latest: the unit tests on the newest releases the ranges allow (prints what differs from the lock)
deps-latest:
	$(PYTHON) scripts/locked_install.py $(VENV) --uv-only
	rm -rf $(LATEST)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(LATEST)
	$(BIN)/uv pip install --quiet --python $(LATEST)/bin/python -e '.[dev]'
	$(BIN)/uv pip install --quiet --python $(LATEST)/bin/python -e '.[dev]' --reinstall-package opentelemetry-proto
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable | grep -v '^pip==' > $(LATEST)/locked.txt
	$(BIN)/uv pip freeze --python $(LATEST)/bin/python --exclude-editable > $(LATEST)/latest.txt
	@echo "Newer than the lock (- locked, + latest):"; diff $(LATEST)/locked.txt $(LATEST)/latest.txt | grep '^[<>]' | sed 's/^</-/; s/^>/+/' || echo "  nothing"
	$(LATEST)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile tests/unit

# make run's configuration: local defaults with the development issuer (GATEWAY_CONFIG overrides).
CONFIG ?= $(or $(GATEWAY_CONFIG),config/local.yaml)

## run: the gateway on http://127.0.0.1:10000 (GATEWAY_PORT overrides); Ctrl-C stops it all
run: $(STAMP)
	$(BIN)/gatewayctl run --config $(CONFIG)

# Test files run in parallel, a whole file per pytest-xdist worker (each file's stacks stay in
# one process). Most of the end-to-end time is waiting (long streams, drains, deferred
# closes), so two workers on two cores halve the run (TEST_WORKERS=0 runs serially).
TEST_WORKERS ?= 2

## test: lint, import contracts, type-check, unit tests, end-to-end tests through real Envoy
##       and in a real browser (Debian's chromium, installed first where missing)
test: $(STAMP) lint imports typecheck browser
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

## bench: overhead of the gateway vs plain Envoy and a no-op ext_proc, and of traces + metrics on vs off (~12 min;
##        not part of test; BENCH_ARGS="--setups gateway,gateway+otel" for the telemetry comparison alone);
##        ends with the guard's verdict lines against bench/baseline.json (BENCH_ARGS="--setups noop,gateway"
##        for the guard alone, ~6 min; add --update-baseline to rewrite the baseline from the run);
##        and the gateway's req/s over a LiteLLM proxy's (BENCH_ARGS="--setups litellm,gateway
##        --workers 1" alone, ~4 min; LiteLLM installed once into .cache/bench-litellm/ from bench/litellm.lock)
##        and a translated stream's sidecar CPU and latency per chunk beside native ones, through Envoy,
##        then in process (BENCH_ARGS="--setups translated --workers 1" alone, ~1.5 min)
##        and a fallback chain's per-attempt filter: a model without a chain, a chained one answered
##        by its first target, and by its second after a 500 (BENCH_ARGS="--setups fallback
##        --workers 1" alone, ~1.5 min; "--setups gateway,fallback --workers 1" adds the no-chain stack)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## profile: where the sidecar's CPU goes (py-spy, by category) under the bench's json and paced-SSE
##          loads, gateway and no-op (~2 min; BENCH_ARGS="--setups gateway+otel" for telemetry on)
profile: $(STAMP)
	$(BIN)/python -m bench --profile --duration 15 $(BENCH_ARGS)

## browser: Debian's chromium for the Playwright tests: nothing if /usr/bin/chromium exists,
##          else apt-get install (needs root); never a browser download of Playwright's own
browser:
	$(PYTHON) scripts/ensure_chromium.py

lint: $(STAMP)
	$(BIN)/ruff check gateway_extproc tests bench scripts
	$(BIN)/ruff format --check gateway_extproc tests bench scripts

# The import contracts in pyproject.toml ([tool.importlinter]): layers, independent providers,
# the mock apart, no cycles. A broken one names the import that breaks it.
imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP)
	$(BIN)/pytest -q tests/e2e

## envoy-config: regenerate envoy/envoy.yaml (the bootstrap for the built-in config; a placeholder
##               where a deployment's sidecar caller token goes)
envoy-config: $(STAMP)
	GATEWAY_SIDECAR_TOKEN=REPLACE-WITH-THIS-DEPLOYMENTS-SIDECAR-TOKEN $(BIN)/gatewayctl envoy-config --out envoy/envoy.yaml --workers 2 --ca-file /etc/ssl/certs/ca-certificates.crt

## proto: regenerate gateway_extproc/admin/_generated from proto/ (committed; never hand-edited)
proto: $(STAMP)
	$(BIN)/python -m gateway_extproc.admin.protogen

clean:
	rm -rf $(VENV) $(LATEST) .run .pytest_cache .mypy_cache .ruff_cache .cache/bench-litellm
