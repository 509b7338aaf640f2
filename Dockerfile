# The sidecar image: the gateway's ext_proc server and gatewayctl. Envoy runs from the official
# Envoy image as its own container (see helm/llm-gateway). Not built on the development machines
# (no container engine there); tests/unit/test_image.py checks it with hadolint and runs the
# commands it runs from a virtualenv built the same way.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# --- build: a virtualenv with the package and its dependencies from pyproject.toml only -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
COPY gateway_extproc ./gateway_extproc
# xds-protos and opentelemetry-proto both ship opentelemetry/proto/*_pb2.py and the last one
# installed wins: reinstall opentelemetry-proto's (newer) files last, as the Makefile does.
RUN python -m venv /opt/gateway \
    && /opt/gateway/bin/pip install --no-cache-dir . \
    && /opt/gateway/bin/pip install --no-cache-dir --no-deps --force-reinstall \
       "opentelemetry-proto==$(/opt/gateway/bin/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && /opt/gateway/bin/pip uninstall --yes pip

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
EXPOSE 50051
# The sidecar alone: one ext_proc worker. Arguments: --config FILE --address HOST:PORT
# --journal FILE (see `python -m gateway_extproc.server --help`).
ENTRYPOINT ["python", "-m", "gateway_extproc.server"]
CMD ["--address", "0.0.0.0:50051"]
