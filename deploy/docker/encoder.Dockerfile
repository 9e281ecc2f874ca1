# syntax=docker/dockerfile:1
# Feature-API on CPU (onnxruntime). Build from the repository root:
#   docker build -f deploy/docker/encoder.Dockerfile -t reaas-encoder:0.1.0-cpu .
# Run with the model mounted at /models (or REAAS_MODEL pointing elsewhere) and an API-key file:
#   docker run -v $PWD/models:/models:ro -v $PWD/keys:/etc/reaas/keys:ro -p 50051:50051 --read-only \
#     --tmpfs /tmp -e REAAS_API_KEY_FILE=/etc/reaas/keys/api-keys.txt reaas-encoder:0.1.0-cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaas ./reaas
COPY services ./services
RUN pip install '.[cpu,server]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 reaas \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin reaas
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/__init__.py deploy/model_check.py ./deploy/
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    REAAS_MODEL=/models/fmnist-robust.onnx REAAS_PORT=50051
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["python", "-m", "deploy.model_check", "--"]
CMD ["python", "-m", "services.encoder"]
