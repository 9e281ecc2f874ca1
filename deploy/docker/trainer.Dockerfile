# syntax=docker/dockerfile:1
# Trainer: torch + the Fashion-MNIST Debian package baked in (no download at run time). One file, two builds:
#   docker build -f deploy/docker/trainer.Dockerfile -t reaas-trainer:0.1.0-cpu .
#   docker build -f deploy/docker/trainer.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#     -t reaas-trainer:0.1.0-gpu .
# Single node: torchrun --standalone --nproc_per_node=N -m services.trainer ... (deploy/k8s/training).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url ${TORCH_INDEX_URL} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaas ./reaas
COPY services ./services
RUN pip install '.[cpu,train]'

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 reaas \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin reaas
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "services.trainer"]
CMD ["--help"]
