# REaaS — one Makefile for set-up, tests and the jobs. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
# onnxruntime-gpu on machines with a working NVIDIA driver, plain onnxruntime elsewhere (never both).
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
RUNTIME_EXTRA := $(if $(HAS_CUDA),gpu,cpu)
STAMP := $(VENV)/.installed-$(RUNTIME_EXTRA)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOS := $(shell find protos -name '*.proto' | sort)

MODEL ?= models/fmnist-robust.onnx
RUN_DIR ?= runs/local
PIXEL_VIEW_ARGS ?= --components 128 --view-spread 4

.PHONY: help install dataset h2load test lint protos clean up down images pretrain run bench bench-quick bench-services bench-triton \
	reliability gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(STAMP) dataset ## virtualenv in .venv with every extra, plus the Fashion-MNIST Debian package

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU wheel of torch first, so nothing below pulls a multi-GB CUDA build.
	$(if $(HAS_CUDA),,$(BIN)/python -m pip install -q torch==2.13.0)
	$(BIN)/python -m pip install -q -e '.[$(RUNTIME_EXTRA),server,train,dev,images]'
	@rm -f $(VENV)/.installed-*
	@touch $@

dataset: ## apt-get install dataset-fashion-mnist when its files are missing
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "installing dataset-fashion-mnist into $(FMNIST_DIR)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; \
	fi

test: install ## install if needed (and the Triton peer where a Python 3.12 exists), then ruff and the test suite (the CI command)
	-@$(MAKE) --no-print-directory $(TRITON_VENV)/.installed h2load || echo "make test: no Triton peer or h2load (their bench tests will skip and say why)"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install ## ruff only
	$(BIN)/ruff check .

protos: ## regenerate the checked-in Python stubs (with .pyi) from protos/
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

clean: ## remove generated outputs (keeps .venv and models/)
	rm -rf results .pytest_cache .ruff_cache

run: install ## the main job: services on loopback, edge client trains and certifies 500 test inputs
	$(BIN)/python -m jobs.run $(RUN_ARGS)

bench: install ## SEaaS vs REaaS on every shipped encoder for the dataset, plus white-box references (hours; resumable) -> results/bench.{md,json,png}
	$(BIN)/python -m jobs.bench $(BENCH_ARGS)

bench-quick: install ## the reduced bench (a few minutes; CI runs its pieces in tests/jobs)
	$(BIN)/python -m jobs.bench --quick $(BENCH_ARGS)

bench-services: install ## Feature-API serving, bound engine (+ served) and semantic benchmarks on MODEL= -> results/benchmarks/
	@mkdir -p results/benchmarks
	$(BIN)/python -m benchmarks.encoder_serving --model $(MODEL) --json > results/benchmarks/encoder_serving.json
	$(BIN)/python -m benchmarks.perturb_engine --model $(MODEL) --grpc --json > results/benchmarks/perturb_engine.json
	$(BIN)/python -m benchmarks.semantic --models $(MODEL) > results/benchmarks/semantic.json

# Triton's Python backend stub links libpython: a Python 3.12 with its shared library (pyenv builds one).
# (the first candidate that runs: a pyenv shim on PATH may exist without the version being selected)
TRITON_PYTHON ?= $(shell for p in $$(command -v python3.12) $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
  "$$p" -c 'import sys' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
TRITON_VENV ?= .venv-triton
PEER_ARGS ?= --model $(MODEL) --seconds 3 --scaling-workers 1,2 --load-generator h2load

$(TRITON_VENV)/.installed: pyproject.toml
	@test -n "$(TRITON_PYTHON)" || { echo "bench-triton: no python3.12 on PATH or in pyenv (set TRITON_PYTHON=)"; exit 1; }
	@test -x $(TRITON_VENV)/bin/python || $(TRITON_PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q nvidia-pytriton 'onnxruntime>=1.17' 'numpy>=1.24'
	@touch $@

h2load: ## apt-get install nghttp2-client (h2load, the compiled load generator of `bench-triton`) when missing
	@command -v h2load >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nghttp2-client; }

bench-triton: install $(TRITON_VENV)/.installed h2load ## Feature-API vs Triton (PyTriton in .venv-triton) at 1/8/64/256 single-image clients
	@mkdir -p results/benchmarks
	$(BIN)/python -m benchmarks.encoder_serving --peer triton --peer-python $(TRITON_VENV)/bin/python $(PEER_ARGS) \
	  --json > results/benchmarks/encoder_vs_triton.json
	$(BIN)/python -c "import json; r = json.load(open('results/benchmarks/encoder_vs_triton.json')); \
	  print('ours/Triton req/s by clients:', {c: round(v, 2) for c, v in r['ours_over_triton'].items()})"

reliability: install ## soundness, fuzzing, security, faults, load -> results/reliability.json (QUICK=1 reduced)
	$(BIN)/python -m reliability --out results/reliability.json $(if $(QUICK),--quick) $(RELIABILITY_ARGS)

pretrain: ## re-train the shipped encoders (one thread each: ~31 min standard, then ~36 min robust (distilled from it), ~46 min RoCL; `make -j2 pretrain` runs two at a time)
	rm -f models/fmnist-standard.onnx models/fmnist-robust.onnx models/fmnist-rocl.onnx
	$(MAKE) models/fmnist-standard.onnx models/fmnist-robust.onnx models/fmnist-rocl.onnx

models/fmnist-standard.onnx: | $(STAMP)
	$(BIN)/python -m services.trainer --mode moco --lam 0 --penalty none --epochs 20 --seed 0 --threads 1 \
	  --no-progress --out-dir runs/fmnist-standard --export $@

# the robust encoder is distilled from the standard one (RRM: match the teacher's features under a
# scale-invariant spectral penalty), so it is built after it; ~36 min on one thread. Then a linear view of
# the pixels (128 principal directions) is set beside its features (services/trainer/pixel_view.py, ~1 min)
models/fmnist-robust.onnx: | models/fmnist-standard.onnx $(STAMP)
	$(BIN)/python -m services.trainer --mode rrm --teacher models/fmnist-standard.onnx --lam 0.2 \
	  --penalty scale_invariant --epochs 60 --seed 0 --threads 1 --no-progress --out-dir runs/fmnist-robust \
	  --export runs/fmnist-robust/encoder.onnx
	$(BIN)/python -m services.trainer.pixel_view --base runs/fmnist-robust/encoder.onnx $(PIXEL_VIEW_ARGS) \
	  --threads 1 --export $@
	$(BIN)/python -m services.trainer.synbench --model $@ --write-card

models/fmnist-rocl.onnx: | $(STAMP)
	$(BIN)/python -m services.trainer --mode rocl --lam 0 --penalty none --epochs 20 --seed 0 --threads 1 \
	  --no-progress --out-dir runs/fmnist-rocl --export $@

gpu-check: install ## served GPU features vs a float64 reference and the certificate's float margin (exit 1 if exceeded)
	$(BIN)/python -m services.encoder.gpu_check --model $(MODEL)

up: ## start two encoder replicas and one perturb on 127.0.0.1, wait for SERVING (MODEL=, RUN_DIR=)
	$(BIN)/python -m deploy.local --run-dir $(RUN_DIR) up --model $(MODEL)

down: ## stop what `make up` started (SIGTERM, then SIGKILL after the grace)
	$(BIN)/python -m deploy.local --run-dir $(RUN_DIR) down

images: ## build the container images with Docker (GPU=1 adds the GPU images, PUSH=1 pushes)
	deploy/docker/build.sh
