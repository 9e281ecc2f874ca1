"""Test helpers shared by the suite's conftests: export a small torch encoder to ONNX with a model card, build
one by hand from ONNX nodes, and run an ONNX model's float32 features with ONNX Runtime (what the Feature-API
serves)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from reaas.onnx_export import torch_to_onnx
from services.common.model_file import sha256_of


def export_encoder(
    module: torch.nn.Module, path: Path, card: dict | None = None, input_shape: tuple[int, ...] = (1, 28, 28)
) -> Path:
    """Export `module` ([B, *input_shape] -> [B, D], dynamic B) to `path`, a model card (sha256) beside it."""
    path.write_bytes(torch_to_onnx(module, input_shape))
    path.with_suffix(".json").write_text(json.dumps({**(card or {}), "model_sha256": sha256_of(path)}))
    return path


def f32(name: str, values) -> onnx.TensorProto:
    """A float32 initializer."""
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def i64(name: str, values) -> onnx.TensorProto:
    """An int64 initializer (shapes, Slice starts / ends / axes / steps)."""
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def hand_model(nodes, initializers, in_shape, out_dim: int, opset: int = 17, input_name: str = "images",
               output_name: str = "features") -> onnx.ModelProto:
    """An encoder graph from hand-written nodes: input [B, *in_shape] float32 -> output [B, out_dim]."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["B", *in_shape])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["B", out_dim])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ort_features(model: Path | str | bytes | onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
    """f̂: images [B, C, H, W] -> features [B, D] float32 by ONNX Runtime on one CPU thread."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        source if isinstance(source, bytes) else str(source), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, dtype=np.float32)})[0]


class Residual(torch.nn.Module):
    """x + relu(conv3x3(x)) on ``ch`` channels: the residual block of the tests' small conv nets."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


def linear_encoder(weight: np.ndarray) -> torch.nn.Module:
    """f(x) = W flatten(x) for W [D, 784] (no bias): its exact ℓ2 radius is R_F / ‖W‖₂."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)
