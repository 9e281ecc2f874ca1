"""The encoder as an ONNX Runtime session: provider choice (TensorRT > CUDA > CPU) and thread count."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] = ()) -> list[str]:
    """``requested`` (or TensorRT, CUDA, CPU) filtered by what this onnxruntime build has; CPU always last."""
    available = set(ort.get_available_providers())
    chosen = [p for p in (requested or PROVIDER_PREFERENCE) if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxEncoder:
    """``run(images [B, C, H, W] float32 in [0, 1]) -> features [B, D] float32`` on one ORT session."""

    def __init__(self, path: Path, *, intra_op_threads: int, providers: Sequence[str] = ()):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=choose_providers(providers)
        )
        self.provider: str = self.session.get_providers()[0]
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError(f"{path}: expected one input and at least one output")
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
            raise ValueError(f"{path}: input must be [B, C, H, W] with static C, H, W, got {shape}")
        self.input_shape: tuple[int, int, int] = tuple(shape[1:])  # type: ignore[assignment]
        probe = self.run(np.zeros((1, *self.input_shape), dtype=np.float32))
        self.feature_dim: int = int(probe.shape[1])
        log.info(
            "ONNX Runtime %s: provider %s (of %s), %d intra-op threads, input %s %s -> %s [B, %d]",
            ort.__version__,
            self.provider,
            self.session.get_providers(),
            intra_op_threads,
            self.input_name,
            list(shape),
            self.output_name,
            self.feature_dim,
        )

    def run(self, images: np.ndarray) -> np.ndarray:
        """Features [B, D] float32 of images [B, C, H, W] float32."""
        (features,) = self.session.run([self.output_name], {self.input_name: images})
        return np.asarray(features, dtype=np.float32).reshape(images.shape[0], -1)
