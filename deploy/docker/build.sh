#!/usr/bin/env bash
# Build every REaaS image from the repository root, tagged as deploy/k8s expects:
#   deploy/docker/build.sh [VERSION]        (env: REGISTRY=ghcr.io/reaas, GPU=1 to add the GPU images, PUSH=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=${1:-0.1.0}
REGISTRY=${REGISTRY:-ghcr.io/reaas}
CUDA_TORCH_INDEX=${CUDA_TORCH_INDEX:-https://download.pytorch.org/whl/cu126}

build() {  # build DOCKERFILE IMAGE VARIANT [docker build flags...]
  local ref="$REGISTRY/$2:$VERSION-$3"
  docker build -f "deploy/docker/$1.Dockerfile" -t "$ref" "${@:4}" .
  if [ "${PUSH:-0}" = 1 ]; then docker push "$ref"; fi
}

build encoder encoder cpu
build perturb perturb cpu
build trainer trainer cpu
if [ "${GPU:-0}" = 1 ]; then
  build encoder-gpu encoder gpu
  build perturb-gpu perturb gpu
  build trainer trainer gpu --build-arg "TORCH_INDEX_URL=$CUDA_TORCH_INDEX"
fi
