"""The one torch → ONNX export: TorchScript exporter, opset 17, dynamic batch axis, bytes out.

Every exported encoder (trainer, benches, reliability stand-in, tests) and the edge client's denoiser go
through ``torch_to_onnx``, so they share one input/output naming and one opset. torch is imported on call:
this module imports on the torch-free edge client.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPSET = 17


def torch_to_onnx(
    module: torch.nn.Module,
    input_shape: tuple[int, ...],
    *,
    input_name: str = "images",
    output_name: str = "features",
    opset: int = OPSET,
) -> bytes:
    """ONNX bytes of ``module`` (put in eval mode) mapping [batch, *input_shape] float32 -> [batch, ...].

    The batch axis is dynamic and named "batch". Parametrized modules (e.g. spectral_norm) must have their
    parametrizations removed first (``services.trainer.export.strip_parametrizations``): the exporter would
    trace the parametrization's power iteration into the graph.
    """
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, *input_shape),),
            buffer,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return buffer.getvalue()
