# syntax=docker/dockerfile:1
# Feature-API on NVIDIA GPUs: onnxruntime-gpu on the NGC TensorRT image (CUDA 12, cuDNN 9, TensorRT 10), so
# the TensorRT and CUDA execution providers both load. Build from the repository root:
#   docker build -f deploy/docker/encoder-gpu.Dockerfile -t reaas-encoder:0.1.0-gpu .
# Run with --gpus all (Docker) or an nvidia.com/gpu limit (deploy/k8s/overlays/gpu).
# 24.10: Ubuntu 22.04, Python 3.10, CUDA 12.6, cuDNN 9, TensorRT 10.5 (onnxruntime-gpu 1.20 needs >= 10.4).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:24.10-py3

FROM ${TENSORRT_IMAGE}
ARG ONNXRUNTIME_GPU_VERSION=1.20.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reaas ./reaas
COPY services ./services
# onnxruntime-gpu only (never together with onnxruntime, which would shadow it).
RUN python3 -m pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" '.[gpu,server]' \
 && python3 -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
 && rm -rf /src
RUN groupadd --system --gid 10001 reaas \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin reaas
WORKDIR /app
COPY deploy/__init__.py deploy/model_check.py ./deploy/
ENV PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
    REAAS_MODEL=/models/fmnist-robust.onnx REAAS_PORT=50051
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["python3", "-m", "deploy.model_check", "--"]
CMD ["python3", "-m", "services.encoder"]
