# The sidecar image: the gateway's ext_proc server and gatewayctl. Envoy runs from the official
# Envoy image as its own container (see helm/llm-gateway). Not built on the development machines
# (no container engine there); tests/deploy/test_image.py checks it with hadolint and runs the
# commands it runs from a virtualenv built the same way.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# --- build: a virtualenv from uv.lock, every file checked against the lock's hashes ---------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY scripts/locked_install.py ./scripts/
COPY gateway_extproc ./gateway_extproc
# What make does for .venv, without the dev extra: pip installs the locked uv (hash-checked) in a
# throw-away virtualenv, `uv sync --locked --no-editable` installs the runtime dependencies and the
# package, opentelemetry-proto is written last (xds-protos ships older copies of its files), and
# the virtualenv has neither pip nor uv.
RUN python scripts/locked_install.py /opt/gateway --image

# --- runtime: the virtualenv on a clean base, no compilers, no caches, a fixed non-root UID -----
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/OWNER/llm-spend-gateway
LABEL org.opencontainers.image.title="llm-spend-gateway" \
      org.opencontainers.image.description="LLM spend-governance gateway: the Envoy ext_proc sidecar and gatewayctl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# The sidecar alone: one ext_proc worker. Arguments: --config FILE --address HOST:PORT
# --journal FILE (see `python -m gateway_extproc.server --help`). It listens on loopback, for
# the Envoy in its own pod; elsewhere only with sidecar.tls (docs/security.md "Who may talk
# to the sidecar"). It needs its caller token and state keys (GATEWAY_SIDECAR_TOKEN,
# GATEWAY_STATE_KEYS, or files named in the config).
ENTRYPOINT ["python", "-m", "gateway_extproc.server"]
CMD ["--address", "127.0.0.1:50051"]
