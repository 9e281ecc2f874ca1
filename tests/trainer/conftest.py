"""Shared fixtures for the trainer tests: single-threaded torch, tiny nets and tiny data."""

from __future__ import annotations

import pytest
import torch

from services.trainer.encoders import EncoderConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def tiny_encoder_config() -> EncoderConfig:
    return EncoderConfig(channels=(4, 8), strides=(2, 2), hidden_dim=16, feature_dim=8)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(8, 1, 28, 28, generator=gen)
    return base.repeat(8, 1, 1, 1).clamp(0, 1)  # 64 images, 8 distinct


@pytest.fixture(scope="session")
def fmnist_small() -> torch.Tensor:
    from services.trainer.data import load_fashion_mnist

    return load_fashion_mnist("train")[0][:256].clone()
