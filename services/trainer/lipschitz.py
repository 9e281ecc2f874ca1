"""Certified (proven upper) ℓ2 Lipschitz bounds of an encoder as the product of layer operator norms.

Conv layers use Sedghi et al. 2019: a zero-padded conv on an n×n input is a restriction of the circular
conv on an N×N torus with N ≥ n + 2·padding, whose operator norm is the maximum over DFT frequencies of
the largest singular value of the kernel's DFT. A stride-s conv is first rewritten exactly as a stride-1
conv on the space-to-depth (polyphase) input, which keeps the bound tight. Dense layers use an exact SVD.
Everything is computed in float64 and multiplied by (1 + 1e-5) to absorb rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.trainer.encoders import ConvEncoder, Normalize

SAFETY = 1.0 + 1e-5


@dataclass(frozen=True)
class ConvOp:
    """A bias-free 2-D convolution: weight [C_out, C_in, k, k], square input of side ``in_size``."""

    weight: np.ndarray
    in_size: int
    padding: int
    stride: int = 1


@dataclass(frozen=True)
class DenseOp:
    """A bias-free dense map x -> W x, weight [out, in]."""

    weight: np.ndarray


@dataclass(frozen=True)
class ScaleOp:
    """Elementwise scaling by per-coordinate factors (normalization, eval-mode batch norm)."""

    factors: np.ndarray


LinearOp = ConvOp | DenseOp | ScaleOp


def polyphase_kernel(weight: np.ndarray, stride: int) -> np.ndarray:
    """Stride-s kernel [C_out, C_in, k, k] as a stride-1 kernel [C_out, C_in·s², ⌈k/s⌉, ⌈k/s⌉] on the
    space-to-depth input x'[(c, a2, b2), i, j] = x_pad[c, s·i + a2, s·j + b2] (an orthogonal re-indexing)."""
    c_out, c_in, k, _ = weight.shape
    kk = -(-k // stride)
    padded = np.zeros((c_out, c_in, kk * stride, kk * stride), dtype=np.float64)
    padded[:, :, :k, :k] = weight
    # Kernel row a = s·a1 + a2 -> axes (a1, a2); likewise columns.
    split = padded.reshape(c_out, c_in, kk, stride, kk, stride)
    return split.transpose(0, 1, 3, 5, 2, 4).reshape(c_out, c_in * stride * stride, kk, kk)


def conv_norm_upper_bound(op: ConvOp) -> float:
    """Sedghi et al. upper bound on a (strided) zero-padded conv's ℓ2 operator norm.

    The stride is removed exactly by the polyphase (space-to-depth) rewrite, so the bound stays tight for
    strided convs; bounding a stride-s conv by its stride-1 version instead loses up to a factor of s.
    """
    kernel = polyphase_kernel(op.weight.astype(np.float64), op.stride)
    side = -(-(op.in_size + 2 * op.padding) // op.stride)  # padded input side in the polyphase grid
    n = max(side, kernel.shape[-1])
    spectrum = np.fft.fft2(kernel, s=(n, n), axes=(2, 3))  # [C_out, C_in·s², N, N]
    per_freq = np.transpose(spectrum, (2, 3, 0, 1))  # [N, N, C_out, C_in·s²]
    return float(np.linalg.svd(per_freq, compute_uv=False).max())


def operator_norm_upper_bound(op: LinearOp) -> float:
    """Proven upper bound on one layer's ℓ2 operator norm (before the safety factor)."""
    if isinstance(op, ConvOp):
        return conv_norm_upper_bound(op)
    if isinstance(op, DenseOp):
        return float(np.linalg.norm(op.weight.astype(np.float64), ord=2))
    return float(np.abs(op.factors).max())


def certified_lipschitz_bound(ops: list[LinearOp]) -> float:
    """Certified ℓ2 Lipschitz bound of ReLU ∘ ... compositions of ``ops``: Π_j ‖T^j‖ · (1 + 1e-5)^n."""
    log_bound = sum(np.log(operator_norm_upper_bound(op)) + np.log(SAFETY) for op in ops)
    return float(np.exp(log_bound))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def operators_from_encoder(encoder: ConvEncoder) -> list[LinearOp]:
    """Linear parts of a ``ConvEncoder`` in forward order, eval-mode batch norm folded into its conv."""
    ops: list[LinearOp] = []
    sizes = encoder.config.spatial_sizes()
    conv_index = 0
    for layer in encoder.linear_layers():
        if isinstance(layer, Normalize):
            ops.append(ScaleOp(np.array([1.0 / float(layer.std)])))
        elif isinstance(layer, nn.Conv2d):
            ops.append(ConvOp(_np(layer.weight), sizes[conv_index], layer.padding[0], layer.stride[0]))
            conv_index += 1
        elif isinstance(layer, nn.BatchNorm2d):
            scale = _np(layer.weight) / np.sqrt(_np(layer.running_var) + layer.eps)
            prev = ops[-1]
            ops[-1] = ConvOp(
                prev.weight * scale[:, None, None, None], prev.in_size, prev.padding, prev.stride
            )
        else:
            ops.append(DenseOp(_np(layer.weight)))
    return ops


def encoder_lipschitz_bound(encoder: ConvEncoder) -> float:
    """Certified ℓ2 Lipschitz bound of a torch ``ConvEncoder`` (eval-mode semantics)."""
    return certified_lipschitz_bound(operators_from_encoder(encoder))


def _onnx_shapes(model) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def operators_from_onnx(path: str) -> list[LinearOp]:
    """Linear parts of a sequential ONNX encoder (Sub/Div/Mul, Conv, BN, Relu, Flatten, Gemm/MatMul+Add)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    shapes = _onnx_shapes(model)
    ops: list[LinearOp] = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kind = node.op_type
        const_inputs = [consts[i] for i in node.input if i in consts]
        if kind in ("Constant", "Relu", "Flatten", "Reshape", "Identity", "Sub") or (
            kind == "Add" and const_inputs
        ):
            continue  # constants, 1-Lipschitz maps and translations
        if kind == "Div" and node.input[1] in consts:
            ops.append(ScaleOp(1.0 / np.ravel(consts[node.input[1]])))
        elif kind == "Mul" and const_inputs:
            ops.append(ScaleOp(np.ravel(const_inputs[0])))
        elif kind == "Conv":
            pads, strides = attrs.get("pads", [0, 0, 0, 0]), attrs.get("strides", [1, 1])
            if (
                attrs.get("group", 1) != 1
                or set(attrs.get("dilations", [1, 1])) != {1}
                or len(set(pads)) != 1
            ):
                raise ValueError(f"unsupported Conv attributes {attrs} in {path}")
            in_size = shapes[node.input[0]][-1]
            ops.append(ConvOp(consts[node.input[1]], in_size, pads[0], strides[0]))
        elif kind == "BatchNormalization":
            gamma, var = consts[node.input[1]], consts[node.input[4]]
            scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            if ops and isinstance(ops[-1], ConvOp):
                prev = ops[-1]
                ops[-1] = ConvOp(
                    prev.weight * scale[:, None, None, None], prev.in_size, prev.padding, prev.stride
                )
            else:
                ops.append(ScaleOp(scale))
        elif kind == "Gemm":
            w = consts[node.input[1]] * attrs.get("alpha", 1.0)
            ops.append(DenseOp(w if attrs.get("transB", 0) else w.T))
        elif kind == "MatMul" and node.input[1] in consts:
            ops.append(DenseOp(consts[node.input[1]].T))
        else:
            raise ValueError(f"operator {kind} ({node.name}) is not supported by the product bound")
    return ops


def onnx_lipschitz_bound(path: str) -> float:
    """Certified ℓ2 Lipschitz bound of a sequential ONNX encoder (product of layer bounds)."""
    return certified_lipschitz_bound(operators_from_onnx(path))
