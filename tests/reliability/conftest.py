"""Fixtures for the reduced reliability suite: a small stand-in encoder and a linear one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_helpers import export_encoder, linear_encoder


@pytest.fixture(scope="session")
def stand_in_onnx(tmp_path_factory) -> Path:
    """The suite's generated stand-in conv encoder [B, 1, 28, 28] -> [B, 32]."""
    from reliability.common import export_stand_in_encoder

    return export_stand_in_encoder(tmp_path_factory.mktemp("models") / "stand-in.onnx", seed=0)


@pytest.fixture(scope="session")
def linear_weight() -> np.ndarray:
    """W [6, 784]: f(x) = W x has the exact worst-case shift ‖W‖₂ r over an ℓ2 ball of radius r."""
    return np.random.default_rng(3).normal(size=(6, 784)).astype(np.float32) / 28.0


@pytest.fixture(scope="session")
def linear_onnx(tmp_path_factory, linear_weight) -> Path:
    """The linear encoder as ONNX with a model card."""
    return export_encoder(linear_encoder(linear_weight), tmp_path_factory.mktemp("models") / "linear.onnx")
