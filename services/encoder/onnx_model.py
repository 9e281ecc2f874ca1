"""The encoder as an ONNX Runtime session: provider choice (TensorRT > CUDA > CPU) and thread count."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PRECISIONS = ("float32", "reduced")

# What each provider may do to the arithmetic. The certificate's floating-point margin
# (services/perturb/engine/float_error.py) models dot products in the served format, summed in any
# order; it does not model Winograd or FFT convolutions, nor TF32 / FP16 unless the format says so.
#  * float32: CUDA with TF32 off and cuDNN pinned to implicit-GEMM convolutions ("DEFAULT" search
#    skips the benchmark that may pick Winograd / FFT); TensorRT is refused: its tactic search may
#    pick Winograd kernels and no ONNX Runtime option pins it to GEMM.
#  * reduced: TensorRT with FP16 engines and CUDA with TF32, margin at u = 2^-11 (float_error.REDUCED).
_PROVIDER_OPTIONS: dict[str, dict[str, dict[str, str]]] = {
    "float32": {
        "CUDAExecutionProvider": {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"},
        "CPUExecutionProvider": {},
    },
    "reduced": {
        "TensorrtExecutionProvider": {"trt_fp16_enable": "True", "trt_int8_enable": "False"},
        "CUDAExecutionProvider": {"use_tf32": "1", "cudnn_conv_algo_search": "DEFAULT"},
        "CPUExecutionProvider": {},
    },
}


def choose_providers(requested: Sequence[str] = (), precision: str = "float32") -> list[tuple[str, dict]]:
    """``requested`` (or TensorRT, CUDA, CPU) filtered by what this onnxruntime build has and what
    ``precision`` allows, each with its options; CPU always last. A requested provider the precision
    forbids is a ValueError, never a silent fallback."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    allowed = _PROVIDER_OPTIONS[precision]
    refused = [p for p in requested if p not in allowed]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} cannot serve {precision} features the certificate's margin covers "
            f"(allowed: {', '.join(allowed)})"
        )
    available = set(ort.get_available_providers())
    chosen = [p for p in (requested or PROVIDER_PREFERENCE) if p in available and p in allowed]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return [(p, dict(allowed[p])) for p in chosen]


class OnnxEncoder:
    """``run(images [B, C, H, W] float32 in [0, 1]) -> features [B, D] float32`` on one ORT session."""

    def __init__(
        self, path: Path, *, intra_op_threads: int, providers: Sequence[str] = (), precision: str = "float32"
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=choose_providers(providers, precision)
        )
        self.precision: str = precision
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
