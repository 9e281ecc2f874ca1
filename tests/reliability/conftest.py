"""Fixtures for the reduced reliability suite: a small stand-in encoder and a linear one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch


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
    from services.common.model_file import sha256_of

    layer = torch.nn.Linear(784, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(linear_weight))
    path = tmp_path_factory.mktemp("models") / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Sequential(torch.nn.Flatten(), layer).eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "B"}, "features": {0: "B"}},
            dynamo=False,
        )
    path.with_suffix(".json").write_text(json.dumps({"model_sha256": sha256_of(path)}))
    return path
