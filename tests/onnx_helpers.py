"""Test helpers shared by the suite's conftests: export a small torch encoder to ONNX with a model card."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from services.common.model_file import sha256_of


def export_encoder(
    module: torch.nn.Module, path: Path, card: dict | None = None, input_shape: tuple[int, ...] = (1, 28, 28)
) -> Path:
    """Export `module` ([B, *input_shape] -> [B, D], dynamic B) to `path`, a model card (sha256) beside it."""
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, *input_shape),),
            str(path),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "B"}, "features": {0: "B"}},
            dynamo=False,
        )
    path.with_suffix(".json").write_text(json.dumps({**(card or {}), "model_sha256": sha256_of(path)}))
    return path


def linear_encoder(weight: np.ndarray) -> torch.nn.Module:
    """f(x) = W flatten(x) for W [D, 784] (no bias): its exact ℓ2 radius is R_F / ‖W‖₂."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)
