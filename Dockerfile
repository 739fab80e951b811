# syntax=docker/dockerfile:1
# One image for the whole suite; the first argument picks the process:
#   docker run aiops-suite gateway | feedback | telemetry | anomaly | remediation | aiops <args>
# Stages: `protos` generates the protobuf code, `deps` builds the dependencies into a venv,
# the final stage copies both plus the sources onto a slim base and runs as a non-root user
# (read-only root filesystem friendly: no bytecode written at run time, state and the
# detector's compiled-code cache under /tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS protos
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install grpcio-tools==1.85.1
WORKDIR /src
COPY protos ./protos
RUN mkdir -p /gen \
 && python -m grpc_tools.protoc -I protos --python_out=/gen --grpc_python_out=/gen \
      $(find protos -name '*.proto') \
 && find /gen -mindepth 1 -type d -exec touch {}/__init__.py \;

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
# Install the runtime dependencies (and the optional OTLP exporter); the package itself
# runs from /app, so it is removed again.
RUN pip install . opentelemetry-exporter-otlp-proto-grpc \
 && pip uninstall -y aiops-suite

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aiops-suite" \
      org.opencontainers.image.description="AIOps suite: gateway and gRPC services" \
      org.opencontainers.image.version="5.7.1"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIOPS_STATE_DIR=/tmp/aiops \
    NUMBA_CACHE_DIR=/tmp/aiops/numba
RUN groupadd --system --gid 10001 aiops \
 && useradd --system --uid 10001 --gid aiops --home-dir /nonexistent --shell /usr/sbin/nologin aiops
COPY --from=deps /opt/venv /opt/venv
COPY --from=protos /gen /app/gen
COPY services /app/services
COPY gateway /app/gateway
COPY deploy/docker/entrypoint.sh /app/entrypoint.sh
# /var/lib/aiops/keys: where docker-compose mounts the gateway's keyring volume (a new
# named volume takes this directory's owner, so the non-root user can write it).
RUN python -m compileall -q /app/services /app/gateway /app/gen \
 && chmod 0555 /app/entrypoint.sh \
 && mkdir -p /var/lib/aiops/keys && chown -R 10001:10001 /var/lib/aiops
WORKDIR /app
USER 10001:10001
# gateway 3000; gRPC 50051-50054; metrics 9151-9154
EXPOSE 3000 50051 50052 50053 50054 9151 9152 9153 9154
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["gateway"]
