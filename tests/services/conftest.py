"""Shared fixtures: tiny ONNX encoders exported from torch, API keys, and server factories on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from onnx_helpers import export_encoder, linear_encoder
from service_helpers import KEYS

from services.common.config import EncoderConfig, PerturbConfig, ServerConfig

_TEST_CARD = {"lipschitz_bound_l2": 3.5, "feature_spread": 0.7, "note": "test"}


@pytest.fixture(scope="session")
def cnn_module() -> torch.nn.Module:
    """A tiny conv encoder [B,1,28,28] -> [B,8]."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 13 * 13, 8),
    )


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory, cnn_module) -> Path:
    """The tiny conv encoder as ONNX, with a model card beside it."""
    return export_encoder(cnn_module, tmp_path_factory.mktemp("models") / "tiny-cnn.onnx", _TEST_CARD)


@pytest.fixture(scope="session")
def linear_weight() -> np.ndarray:
    """W [6, 784] of the linear encoder f(x) = W x (its exact l2 radius is R_F / ||W||_2)."""
    return np.random.default_rng(1).normal(size=(6, 784)).astype(np.float32) / 28.0


@pytest.fixture(scope="session")
def linear_onnx(tmp_path_factory, linear_weight) -> Path:
    """The linear encoder f(x) = W flatten(x) as ONNX."""
    path = tmp_path_factory.mktemp("models") / "lin.onnx"
    return export_encoder(linear_encoder(linear_weight), path, _TEST_CARD)


@pytest.fixture(scope="session")
def api_key_file(tmp_path_factory) -> Path:
    """Two keys: alice (server default quota) and bob (10 images/min)."""
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# name key [images_per_minute]\nalice {KEYS['alice']}\nbob {KEYS['bob']} 10\n")
    return path


@pytest.fixture
def start_server() -> Iterator[Callable]:
    """``start_server(create_server, config, **kwargs) -> (server, channel)``; stopped at teardown."""
    started = []

    def start(create, config: ServerConfig, **kwargs):
        server, port = create(config, **kwargs)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, channel

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


@pytest.fixture
def encoder_config(cnn_onnx, api_key_file) -> EncoderConfig:
    """Encoder on 127.0.0.1:0 with auth, 1 intra-op thread, batching on."""
    return EncoderConfig(
        model_path=cnn_onnx,
        port=0,
        bind_address="127.0.0.1",
        api_key_file=api_key_file,
        intra_op_threads=1,
        worker_threads=8,
    )


@pytest.fixture
def perturb_config(linear_onnx, api_key_file) -> PerturbConfig:
    """Perturb on 127.0.0.1:0 with auth, serving the linear encoder."""
    return PerturbConfig(
        model_path=linear_onnx, port=0, bind_address="127.0.0.1", api_key_file=api_key_file, worker_threads=4
    )
