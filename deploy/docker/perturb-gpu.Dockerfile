# syntax=docker/dockerfile:1
# F2IPerturb-API with CUDA builds of torch and onnxruntime (both wheels bundle their CUDA libraries; only the
# driver comes from the node). Today the bound engine computes on CPU, so deploy/k8s/overlays/gpu runs the
# CPU image; this one is for a GPU-enabled engine. Build from the repository root:
#   docker build -f deploy/docker/perturb-gpu.Dockerfile -t reaas-perturb:0.1.0-gpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url ${TORCH_INDEX_URL} "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaas ./reaas
COPY services ./services
RUN pip install '.[gpu,server,train]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 reaas \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin reaas
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/__init__.py deploy/model_check.py ./deploy/
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    REAAS_MODEL=/models/fmnist-robust.onnx REAAS_PORT=50052
USER 10001:10001
EXPOSE 50052
ENTRYPOINT ["python", "-m", "deploy.model_check", "--"]
CMD ["python", "-m", "services.perturb"]
