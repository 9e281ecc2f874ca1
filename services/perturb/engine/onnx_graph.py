"""ONNX encoder -> bound graph: affine / ReLU / Add nodes with static per-sample shapes.

Input normalization, BatchNormalization and pooling become affine nodes; consecutive affine nodes
are folded (BN into its conv, normalization into the first conv) so that operator norms are taken
of the composed maps. MaxMin (GroupSort-2) is recognized as a whole and lowered exactly into the same
node kinds: MaxMin(x) = swap(x) + split(relu(diff(x))) (``linear_maps.PairMap``), the final Add
naming x as its ``lipschitz_source`` (MaxMin's own Lipschitz, interval and rounding rules). The
loader refuses what it cannot model exactly: any op, attribute, attribute value, input or output
outside the table below fails at load time with ``UnsupportedModelError`` naming the node (and the
attribute). ``build_bound_graph`` is a table of per-op converters
(``_OPS``): each supported op has an attribute allow-list, a converter for when one of its inputs
depends on the image, and an exact evaluator for when all its inputs are constant; an op without
an entry fails by construction. The same table is in docs/engine-supported-ops.md.

Model: default ONNX domain, opset 7-21; one float32 input [B, C, H, W] (static C, H, W); one float32
output; nodes topologically sorted, each tensor defined once. Constants keep their ONNX dtype while
folded (float32 arithmetic stays float32, as in ONNX Runtime); a constant operand of an op on the
image tensor must be float32 and finite (it is widened to float64 exactly). Values computed from the
batch size (``Shape``) may only be moved (Gather, Slice, Concat, Unsqueeze, Squeeze, Identity, Cast
to int32/int64), never computed with, and may only end up as entry 0 of a Reshape target.

MaxMin on an image tensor x [B, C, ...] (C even, h = C/2; what torch exports for
``cat([maximum(a, b), minimum(a, b)], 1)`` with a, b = x[:, :h], x[:, h:2h]):
``s0 = Slice(x)`` selecting channels [0, h) and ``s1 = Slice(x)`` selecting [h, 2h) of axis 1 only
(constant starts / ends / axes / steps, any spelling ONNX evaluates to exactly those channels in order),
``Max(s0, s1)`` and ``Min(s0, s1)`` (either operand order), ``y = Concat(Max, Min, axis=1)``; each
Slice read only by that Max and that Min, each of those only by that Concat, none a graph output.
Any other Slice, Max, Min or Concat on an image-dependent tensor is refused, naming the node.

Op                  On the image tensor                 Folded  Attributes accepted (all else refused)
------------------  ----------------------------------  ------  ----------------------------------------------
Conv                2-D convolution → affine; constant  no      group 1; dilations [1, 1]; strides 2 ints ≥ 1;
                    float32 weight [O, C, kh, kw],              pads 4 ints ≥ 0; kernel_shape equal to the
                    optional bias [O]                           weight's; auto_pad NOTSET, VALID, or
                                                                SAME_UPPER / SAME_LOWER when the padding they
                                                                imply is ≥ 0 (pads then absent)
Gemm                A = image tensor [B, K], constant   no      transA 0; transB 0 or 1; alpha, beta finite; C
                    B and C → affine                            must broadcast to [1, N]
MatMul              image tensor [B, K] @ constant [K,  no      none (a constant left operand, two image
                    N] → affine                                 operands or a rank ≠ 2 operand are refused)
BatchNormalization  inference form, constant scale, B,  no      epsilon finite with var + epsilon > 0;
                    mean, var of shape [C] → affine             momentum (unused in inference); training_mode
                                                                0; spatial 1 (opset < 9); outputs after the
                                                                first unused
AveragePool         2-D → affine                        no      kernel_shape (required) 2 ints ≥ 1; strides 2
                                                                ints ≥ 1; pads 4 ints ≥ 0 and < kernel;
                                                                count_include_pad 0 or 1; dilations [1, 1];
                                                                ceil_mode 0, or 1 when it leaves the output
                                                                size unchanged; auto_pad NOTSET or VALID
GlobalAveragePool   [C, H, W] → affine                  no      none
Relu                ReLU node                           no      none
Add                 image + constant, or image + image  yes     none
                    of the same shape
Sub                 image − constant, constant − image  yes     none
Mul                 image × constant                    yes     none
Div                 image ÷ nonzero constant            yes     none (folded: integer Div truncates toward
                                                                zero, ÷ 0 refused)
Flatten             reshape to [B, D]                   no      axis 1 (or its negative alias)
Reshape             reshape keeping the batch first:    no      allowzero 0, or 1 when the target has no 0
                    target entry 0 is 0, −1 or the
                    batch size from Shape
Identity            alias                               yes     none
Dropout             alias (inference mode)              yes     ratio, seed (unused in inference); input
                                                                training_mode absent, empty or a constant
                                                                False; the mask output unused
Shape               a constant, the batch size kept     yes     start, end
                    symbolic
Gather              refused                             yes     axis; int32/int64 indices in range
Unsqueeze, Squeeze  refused                             yes     axes as attribute (opset < 13) or int64 input
                                                                (opset ≥ 13), not both
Concat              Concat(Max, Min) of MaxMin (axis   yes     axis (required); inputs of rank ≥ 1 and one
                    1) → lowered MaxMin; else refused           dtype
Slice               a half of axis 1 inside MaxMin      yes     starts, ends, axes as attributes (opset < 10)
                    (no node of its own); else refused          or inputs; steps ≠ 0
Max, Min            of the two halves inside MaxMin     no      none (exactly two inputs)
                    (no node of its own); else refused
Cast                refused                             yes     to FLOAT, DOUBLE, FLOAT16, (U)INT8/16/32/64 or
                                                                BOOL (FLOAT16 only where its rounding is
                                                                unambiguous; float → int only in range,
                                                                truncated toward zero); saturate
Constant            —                                   yes     exactly one of value, value_float,
                                                                value_floats, value_int, value_ints
                                                                (sparse_value, value_string, value_strings
                                                                refused); dtypes float16/32/64, (u)int8-64,
                                                                bool
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from services.perturb.engine.linear_maps import (
    Conv2dMap,
    DenseMap,
    LinearMap,
    PairMap,
    ReshapeMap,
    ScaleMap,
    Shape,
    compose,
)

_MIN_OPSET, _MAX_OPSET = 7, 21  # default-domain opsets whose operator specs were audited
_BATCH_SENTINEL = 7919  # a prime stand-in for the dynamic batch size while evaluating shape subgraphs
_BATCH_SENTINEL_2 = 104729  # a second stand-in: shape values that differ between the two carry the batch


class UnsupportedModelError(ValueError):
    """The ONNX model uses an op or a configuration the bound engine cannot bound."""


@dataclass
class Node:
    """A bound-graph node; ``kind``: "input", "affine" (lmap + full-shape bias), "relu" or "add".

    ``lipschitz_source`` = k (only on the "add" that ends a lowered MaxMin) states that this node's value
    is MaxMin of node k's value: the pairs (i, i + C/2) along dim 0 sorted, max first. Hence it is
    1-Lipschitz in node k jointly (ℓ2), each coordinate is max(L_a, L_b)-Lipschitz where L_a, L_b are its
    pair's, its interval is the pair sort of node k's, and the served runtime computes it from node k's
    computed value exactly (Slice / Max / Min / Concat do not round). Graph rewrites keep the index
    valid (``prune`` renumbers it, or drops it when node k goes).

    ``value_of`` = i (set by :func:`fold_affine` on the graph it returns) states that this node computes the
    exact value of node i of the *unfolded* graph it was folded from: a merged chain the value of its last
    node. The float-error model pairs unfolded and folded nodes by it (names are free text in ONNX and can
    collide with the ``+``-joined names of merged chains). ``None``: no such statement.
    """

    kind: str
    inputs: tuple[int, ...]
    shape: Shape
    name: str
    lmap: LinearMap | None = None
    bias: torch.Tensor | None = None
    lipschitz_source: int | None = None
    value_of: int | None = None
    # affine only: elementwise magnitude of the constants the served op sums into its bias, where that
    # exceeds |bias|: BatchNormalization's B − s·mean is precomputed by the runtime in the served format, so
    # its rounding scales with |B| + |s·mean| (tiny after cancellation). None = |bias|. Read by float_error.
    bias_terms: torch.Tensor | None = None


@dataclass
class BoundGraph:
    """Nodes in topological order; node 0 is the input, ``output`` the feature node (flat [D])."""

    nodes: list[Node]
    output: int
    consumers: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.consumers = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                self.consumers[j].append(i)

    @property
    def input_shape(self) -> Shape:
        return self.nodes[0].shape

    def to(self, dtype: torch.dtype) -> BoundGraph:
        """A copy with all parameters cast to ``dtype``."""
        nodes = [
            replace(
                n,
                lmap=None if n.lmap is None else n.lmap.to(dtype),
                bias=None if n.bias is None else n.bias.to(dtype),
                bias_terms=None if n.bias_terms is None else n.bias_terms.to(dtype),
            )
            for n in self.nodes
        ]
        return BoundGraph(nodes, self.output)

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Values of every node for inputs x [N, *input_shape]."""
        vals: list[torch.Tensor] = []
        for n in self.nodes:
            if n.kind == "input":
                v = x
            elif n.kind == "affine":
                v = n.lmap.apply(vals[n.inputs[0]]) + n.bias.to(x.dtype)
            elif n.kind == "relu":
                v = torch.relu(vals[n.inputs[0]])
            else:
                v = vals[n.inputs[0]] + vals[n.inputs[1]]
            vals.append(v)
        return vals

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of inputs x [N, *input_shape]."""
        return self.forward_all(x)[self.output].reshape(x.shape[0], -1)


def _err(node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{why}: op {node.op_type} at node '{node.name or node.output[0]}'")


def load_onnx_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX model from a path, bytes or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(os.fspath(source))


# ---- tensor dtypes ---------------------------------------------------------------------------------

# element types the loader evaluates exactly (Cast targets and folded constants); others are refused
_NP_TYPES: dict[int, type] = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64,
    TensorProto.BOOL: np.bool_,
}
_DTYPES = frozenset(np.dtype(t) for t in _NP_TYPES.values())
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _check_dtype(node: onnx.NodeProto, v: np.ndarray, what: str) -> None:
    if v.dtype not in _DTYPES:
        raise _err(node, f"{what} has dtype {v.dtype}, which the loader does not evaluate")


# ---- attribute allow-lists ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attr:
    """An accepted attribute: ``ok(value)`` decides, ``accepted`` says what passes (for messages)."""

    ok: Callable[[Any], bool]
    accepted: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(*vals: int) -> _Attr:
    return _Attr(lambda v: _is_int(v) and v in vals, " or ".join(map(str, vals)))


def _ints(n: int, lo: int | None = None, only: int | None = None) -> _Attr:
    def ok(v: Any) -> bool:
        return (
            isinstance(v, list)
            and len(v) == n
            and all(_is_int(i) for i in v)
            and (lo is None or all(i >= lo for i in v))
            and (only is None or all(i == only for i in v))
        )

    what = f"[{', '.join([str(only)] * n)}]" if only is not None else f"{n} integers >= {lo}"
    return _Attr(ok, what)


def _str_in(*vals: str) -> _Attr:
    return _Attr(lambda v: isinstance(v, bytes) and v.decode() in vals, " or ".join(vals))


_ANY_INT = _Attr(_is_int, "an integer")
_ANY_FLOAT = _Attr(lambda v: isinstance(v, float), "a float")
_FINITE = _Attr(lambda v: isinstance(v, float) and math.isfinite(v), "a finite float")
_INT_LIST = _Attr(lambda v: isinstance(v, list) and all(_is_int(i) for i in v), "a list of integers")
_FLOAT_LIST = _Attr(
    lambda v: isinstance(v, list) and all(isinstance(i, float) for i in v), "a list of floats"
)
_TENSOR = _Attr(lambda v: isinstance(v, onnx.TensorProto), "a tensor")
_CAST_TO = _Attr(lambda v: _is_int(v) and v in _NP_TYPES, "FLOAT, DOUBLE, FLOAT16, (U)INT8/16/32/64 or BOOL")
_PADS = _ints(4, lo=0)
_STRIDES = _ints(2, lo=1)
_KERNEL = _ints(2, lo=1)
_NO_DILATION = _ints(2, only=1)


def _attrs(node: onnx.NodeProto, allowed: dict[str, _Attr] | None = None, opset: int | None = None) -> dict:
    """The node's attributes as Python values; with ``allowed``, refuse any name or value not in it.

    With ``opset``, an attribute the op's schema at that opset does not define is refused too.
    """
    schema_attrs = None
    if opset is not None:
        schema_attrs = set(onnx.defs.get_schema(node.op_type, opset, "").attributes)
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if allowed is not None:
            if attr.name not in allowed or (schema_attrs is not None and attr.name not in schema_attrs):
                raise _err(node, f"attribute '{attr.name}' is not supported")
            if attr.ref_attr_name:
                raise _err(node, f"attribute '{attr.name}' refers to a function attribute")
            if attr.name in out:
                raise _err(node, f"attribute '{attr.name}' given twice")
        value = onnx.helper.get_attribute_value(attr)
        if allowed is not None and not allowed[attr.name].ok(value):
            shown = value.decode() if isinstance(value, bytes) else value
            if isinstance(shown, onnx.TensorProto):
                shown = f"<tensor {shown.name}>"
            accepted = allowed[attr.name].accepted
            raise _err(node, f"attribute '{attr.name}' = {shown!r} is not supported (accepted: {accepted})")
        out[attr.name] = value
    return out


def _axis(node: onnx.NodeProto, axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` normalized to [0, rank), refused when out of range."""
    if not -rank <= int(axis) < rank:
        raise _err(node, f"{what} {axis} is out of range for rank {rank}")
    return int(axis) % rank


# ---- the builder: bound-graph nodes, constants and the tensor-name maps --------------------------------


class _Builder:
    """State of one translation: bound-graph nodes, dynamic tensor -> node, constant tensor -> value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        versions = {o.domain: o.version for o in model.opset_import}
        self.opset = versions.get("", versions.get("ai.onnx"))
        if self.opset is None or not _MIN_OPSET <= self.opset <= _MAX_OPSET:
            raise UnsupportedModelError(
                f"default-domain opset {self.opset} is not supported (accepted: {_MIN_OPSET}-{_MAX_OPSET})"
            )
        if len(g.sparse_initializer):
            raise UnsupportedModelError("sparse initializers are not supported")
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        graph_inputs = [i for i in g.input if i.name not in inits]
        if len(graph_inputs) != 1 or len(g.output) != 1:
            raise UnsupportedModelError("the encoder must have exactly one input and one output")
        tt = graph_inputs[0].type.tensor_type
        if not graph_inputs[0].type.HasField("tensor_type") or tt.elem_type != TensorProto.FLOAT:
            raise UnsupportedModelError("the input must be a float32 tensor")
        out_tt = g.output[0].type.tensor_type
        if g.output[0].type.HasField("tensor_type") and out_tt.elem_type not in (0, TensorProto.FLOAT):
            raise UnsupportedModelError("the output must be a float32 tensor")
        dims = tt.shape.dim
        if len(dims) != 4 or any(not d.HasField("dim_value") or d.dim_value < 1 for d in dims[1:]):
            raise UnsupportedModelError("the input must be [B, C, H, W] with static C, H, W")
        in_shape = tuple(int(d.dim_value) for d in dims[1:])

        self.consts: dict[str, np.ndarray] = dict(inits)  # constant tensors (weights, shape arithmetic)
        # constants that depend on the batch size: their value with the second stand-in
        self.alt: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = [Node("input", (), in_shape, graph_inputs[0].name)]
        self.where: dict[str, int] = {graph_inputs[0].name: 0}  # dynamic tensor name -> node index
        self.used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        self.output_name = g.output[0].name
        # tensor name -> the nodes reading it (once per read) and whether it is a graph output
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        # image-dependent parts of a MaxMin being matched (halves, Max, Min): no node of their own
        self.pending: dict[str, _MaxMinPart] = {}

    # -- reading inputs --
    def src(self, node: onnx.NodeProto) -> tuple[int, Shape]:
        """The node index and per-sample shape of input 0, which must be the only dynamic input."""
        if node.input[0] not in self.where:
            raise _err(node, "the image-dependent tensor must be the first input (constant first operand)")
        if any(i in self.where for i in node.input[1:]):
            raise _err(node, "more than one image-dependent input")
        k = self.where[node.input[0]]
        return k, self.nodes[k].shape

    def has_input(self, node: onnx.NodeProto, i: int) -> bool:
        return len(node.input) > i and bool(node.input[i])

    def value(self, node: onnx.NodeProto, i: int) -> np.ndarray:
        """Constant input i as stored (its ONNX dtype); refused if dynamic or batch-size dependent."""
        name = node.input[i]
        if name not in self.consts:
            raise _err(node, f"input '{name}' must be a constant")
        if name in self.alt:
            raise _err(node, f"input '{name}' depends on the batch size")
        v = self.consts[name]
        _check_dtype(node, v, f"input '{name}'")
        return v

    def weight(self, node: onnx.NodeProto, i: int) -> np.ndarray:
        """Constant float32 input i (the image tensor's type), finite, widened exactly to float64."""
        v = self.value(node, i)
        if v.dtype != np.float32:
            raise _err(node, f"constant input '{node.input[i]}' has dtype {v.dtype}, expected float32")
        if not np.all(np.isfinite(v)):
            raise _err(node, f"constant input '{node.input[i]}' is not finite")
        return v.astype(np.float64)

    # -- emitting nodes --
    def add_affine(self, src: int, lmap: LinearMap, bias: torch.Tensor | None, name: str,
                   bias_terms: torch.Tensor | None = None) -> int:
        b = torch.zeros(lmap.out_shape, dtype=torch.float64) if bias is None else bias.to(torch.float64)
        b = b.expand(lmap.out_shape).clone()
        if bias_terms is not None:
            bias_terms = torch.maximum(bias_terms.to(torch.float64).expand(lmap.out_shape), b.abs()).clone()
        self.nodes.append(Node("affine", (src,), tuple(lmap.out_shape), name, lmap, b, bias_terms=bias_terms))
        return len(self.nodes) - 1

    def set_affine(self, node: onnx.NodeProto, src: int, lmap: LinearMap, bias: torch.Tensor | None,
                   bias_terms: torch.Tensor | None = None) -> None:
        self.where[node.output[0]] = self.add_affine(src, lmap, bias, _name(node), bias_terms)

    def const_full(self, arr: np.ndarray, shape: Shape, node: onnx.NodeProto) -> torch.Tensor:
        """A constant broadcast to the per-sample ``shape``; refused if it would broadcast the tensor."""
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == len(shape) + 1:
            if a.shape[0] != 1:
                raise _err(node, "constant varies along the batch dimension")
            a = a[0]
        try:
            return torch.from_numpy(np.broadcast_to(a, shape).copy())
        except ValueError as exc:
            raise _err(node, f"constant of shape {a.shape} does not broadcast to {shape}") from exc

    # -- one ONNX node --
    def convert(self, node: onnx.NodeProto) -> None:
        spec = _OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if spec is None:
            raise _err(node, "unsupported op")
        if not node.output or not node.output[0]:
            raise _err(node, "the node has no output")
        schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        if not schema.min_input <= len(node.input) <= schema.max_input:
            raise _err(
                node,
                f"{len(node.input)} inputs (opset {self.opset} takes {schema.min_input}-{schema.max_input})",
            )
        if len(node.output) > min(schema.max_output, spec.outputs):
            raise _err(node, f"{len(node.output)} outputs")
        for extra in node.output[1:]:
            if extra and extra in self.used:
                raise _err(node, f"output '{extra}' is used (only the first output is modelled)")
        for o in node.output:
            if o and (o in self.consts or o in self.where or o in self.pending):
                raise _err(node, f"tensor '{o}' is defined twice")
        for i in node.input:
            if i and i not in self.consts and i not in self.where and i not in self.pending:
                raise _err(node, f"input '{i}' is not defined before the node")
        a = _attrs(node, spec.attrs, self.opset)
        partial = [i for i in node.input if i in self.pending]
        if partial and node.op_type not in _MAXMIN_OPS:
            raise _err(node, f"input '{partial[0]}' is part of a MaxMin pattern and may only be used there")
        if any(i in self.where or i in self.pending for i in node.input):
            if spec.dynamic is None:
                raise _err(node, "op not supported on image-dependent tensors")
            spec.dynamic(self, node, a)
        else:
            if spec.const is None:
                raise _err(node, "constant-only node not supported")
            self.fold(node, spec, a)

    def fold(self, node: onnx.NodeProto, spec: _Op, a: dict) -> None:
        """Evaluate a constant-only node (twice when an input depends on the batch size)."""
        x = [self.consts[i] if i else None for i in node.input]
        for i, v in zip(node.input, x, strict=True):
            if v is not None:
                _check_dtype(node, v, f"input '{i}'")
        batch_in = [k for k, i in enumerate(node.input) if i and i in self.alt]
        if batch_in:
            movable = spec.batch_inputs(node, a) if spec.batch_inputs else set()
            bad = [node.input[k] for k in batch_in if movable != "all" and k not in movable]
            if bad:
                raise _err(node, f"input '{bad[0]}' depends on the batch size (only moved, not computed)")
        try:
            with np.errstate(all="ignore"):
                v = np.asarray(spec.const(node, a, x))
                v2 = None
                if batch_in:
                    v2 = np.asarray(
                        spec.const(node, a, [self.alt.get(i, c) for i, c in zip(node.input, x, strict=True)])
                    )
        except UnsupportedModelError:
            raise
        except (ValueError, IndexError, TypeError, OverflowError, ArithmeticError) as exc:
            raise _err(node, f"cannot evaluate the constant ({exc})") from exc
        _check_dtype(node, v, "the result")
        self.consts[node.output[0]] = v
        if v2 is not None and not np.array_equal(v, v2):
            self.alt[node.output[0]] = v2

    def finish(self, fold: bool) -> BoundGraph:
        out_name, nodes = self.output_name, self.nodes
        if out_name not in self.where:
            raise UnsupportedModelError(f"output '{out_name}' is not computed from the input")
        out_idx = self.where[out_name]
        if len(nodes[out_idx].shape) != 1:
            out_idx_shape = nodes[out_idx].shape
            nodes.append(
                Node(
                    "affine",
                    (out_idx,),
                    (int(np.prod(out_idx_shape)),),
                    "flatten_output",
                    ReshapeMap(out_idx_shape, (int(np.prod(out_idx_shape)),)),
                    torch.zeros(int(np.prod(out_idx_shape)), dtype=torch.float64),
                )
            )
            out_idx = len(nodes) - 1
        if self.pending:
            name, part = next(iter(self.pending.items()))
            raise _err(part.node, f"tensor '{name}' is not completed into a MaxMin Concat")
        pruned = prune(BoundGraph(nodes, out_idx))
        return fold_affine(pruned) if fold else pruned


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


# ---- converters: one ONNX op on the image-dependent tensor -> bound-graph nodes ----------------------


def _alias(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, _ = b.src(node)
    b.where[node.output[0]] = src


def _dropout(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    _check_inference(node, b.value(node, 2) if b.has_input(node, 2) else None)
    _alias(b, node, a)


def _check_inference(node: onnx.NodeProto, training_mode: np.ndarray | None) -> None:
    """Dropout is the identity only in inference mode (ONNX Runtime drops at random in training mode)."""
    if training_mode is None:
        return
    t = np.asarray(training_mode)
    if t.dtype != np.bool_ or t.size != 1 or bool(t.reshape(())):
        raise _err(node, "input 'training_mode' must be absent or a constant False")


def _relu(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    b.nodes.append(Node("relu", (src,), shape, _name(node)))
    b.where[node.output[0]] = len(b.nodes) - 1


def _spatial_pads(
    node: onnx.NodeProto, a: dict, hw: Shape, k: tuple[int, ...], strides: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from ``pads`` / ``auto_pad`` (the allow-list bounds the modes)."""
    mode = a.get("auto_pad", b"NOTSET").decode()
    if mode != "NOTSET" and "pads" in a:
        raise _err(node, f"attribute 'pads' together with auto_pad {mode}")
    if mode == "NOTSET":
        p = a.get("pads", [0, 0, 0, 0])
        return (p[0], p[1], p[2], p[3])
    if mode == "VALID":
        return (0, 0, 0, 0)
    head, tail = [], []
    for n, kk, s in zip(hw, k, strides, strict=True):
        need = (-(-n // s) - 1) * s + kk - n  # SAME: output ceil(n / s)
        if need < 0:  # ONNX Runtime would crop (negative padding)
            raise _err(node, f"attribute 'auto_pad' = {mode!r} implies negative padding")
        h = need // 2 if mode == "SAME_UPPER" else (need + 1) // 2
        head.append(h)
        tail.append(need - h)
    return (head[0], head[1], tail[0], tail[1])


def _check_out(node: onnx.NodeProto, lmap: Conv2dMap) -> None:
    if min(lmap.out_shape[1:]) < 1:
        raise _err(node, f"kernel larger than the padded input {lmap.in_shape}")


def _conv(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    if len(shape) != 3:
        raise _err(node, "Conv input must be [C, H, W]")
    w = b.weight(node, 1)
    if w.ndim != 4 or w.shape[1] != shape[0]:
        raise _err(node, f"weight of shape {w.shape} does not fit the input {shape} (group 1)")
    k = tuple(int(v) for v in w.shape[2:])
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != k:
        raise _err(node, f"attribute 'kernel_shape' = {a['kernel_shape']} differs from the weight's {k}")
    strides = tuple(a.get("strides", [1, 1]))
    lmap = Conv2dMap(torch.from_numpy(w), strides, _spatial_pads(node, a, shape[1:], k, strides), shape)
    _check_out(node, lmap)
    bias = None
    if b.has_input(node, 2):
        bv = b.weight(node, 2)
        if bv.shape != (w.shape[0],):
            raise _err(node, f"bias of shape {bv.shape}, expected ({w.shape[0]},)")
        bias = torch.from_numpy(bv).reshape(-1, 1, 1).expand(lmap.out_shape)
    b.set_affine(node, src, lmap, bias)


def _batchnorm(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    if len(shape) < 1:
        raise _err(node, "BatchNormalization input must be [B, C, ...]")
    scale, bias, mean, var = (b.weight(node, i) for i in range(1, 5))
    if any(v.shape != (shape[0],) for v in (scale, bias, mean, var)):
        raise _err(node, f"scale, B, mean and var must have shape ({shape[0]},)")
    den = var + a.get("epsilon", 1e-5)
    if not np.all(den > 0):
        raise _err(node, "var + epsilon must be positive")
    s = scale / np.sqrt(den)
    sh = (-1,) + (1,) * (len(shape) - 1)

    def full(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(v.reshape(sh), shape).copy())

    # the runtime serves s′·x + (B − mean·s′) with both constants precomputed in the served format (also when
    # it fuses BN into a preceding conv): the bias's rounding is charged at |B| + |mean·s|, not |B − mean·s|
    b.set_affine(node, src, ScaleMap(full(s)), full(bias - mean * s),
                 bias_terms=full(np.abs(bias) + np.abs(mean * s)))


def _dense(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    """Gemm / MatMul of the flat image tensor [B, K] with a constant [K, N]."""
    src, shape = b.src(node)
    if len(shape) != 1:
        raise _err(node, f"{node.op_type} needs a flat [B, D] dynamic first input")
    w = b.weight(node, 1)
    if w.ndim != 2:
        raise _err(node, f"constant operand of rank {w.ndim}, expected 2")
    if a.get("transB", 0):
        w = w.T
    if w.shape[0] != shape[0]:
        raise _err(node, f"constant operand of shape {w.shape} does not fit the input {shape}")
    w = w * a.get("alpha", 1.0) if node.op_type == "Gemm" else w
    wt = torch.from_numpy(np.ascontiguousarray(w.T))  # [out, in]
    lmap = DenseMap(wt, shape, (int(wt.shape[0]),))
    bias = None
    if node.op_type == "Gemm" and b.has_input(node, 2):
        bias = b.const_full(b.weight(node, 2) * a.get("beta", 1.0), lmap.out_shape, node)
    b.set_affine(node, src, lmap, bias)


def _flatten(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    axis = a.get("axis", 1)
    if not -len(shape) - 1 <= axis <= len(shape) or axis % (len(shape) + 1) != 1:
        raise _err(node, f"attribute 'axis' = {axis} is not supported (accepted: 1, the batch stays alone)")
    b.set_affine(node, src, ReshapeMap(shape, (int(np.prod(shape)),)), None)


def _reshape(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    name = node.input[1]
    if name not in b.consts:
        raise _err(node, f"input '{name}' must be a constant")
    t1, t2 = b.consts[name], b.alt.get(name, b.consts[name])
    if t1.dtype != np.int64 or t1.ndim != 1 or len(t1) < 2:
        raise _err(node, f"target shape must be int64 of length >= 2, got {t1.dtype} {t1.shape}")
    if not np.array_equal(t1[1:], t2[1:]):
        raise _err(node, "target shape entries after the first depend on the batch size")
    allowzero = a.get("allowzero", 0)
    if allowzero and 0 in t1.tolist():  # a literal 0: an empty tensor, never this input's reshape
        raise _err(node, "attribute 'allowzero' = 1 with a 0 in the target shape")
    head = int(t1[0])
    if (head, int(t2[0])) != (_BATCH_SENTINEL, _BATCH_SENTINEL_2):
        if head != t2[0] or head not in ((-1,) if allowzero else (0, -1)):
            raise _err(node, "Reshape must keep the batch dimension first")
    rest = [int(v) for v in t1[1:]]
    if any(v < -1 for v in rest) or rest.count(-1) + (head == -1) > 1:
        raise _err(node, f"invalid target shape {t1.tolist()}")
    if 0 in rest:
        if any(v == 0 and i >= len(shape) for i, v in enumerate(rest)):
            raise _err(node, "a 0 in the target shape beyond the input's rank")
        rest = [shape[i] if v == 0 else v for i, v in enumerate(rest)]
    size = int(np.prod(shape))
    if -1 in rest:
        known = int(np.prod([v for v in rest if v != -1]))
        if known == 0 or size % known:
            raise _err(node, f"Reshape {shape} -> {t1.tolist()} changes the per-sample size")
        rest = [size // known if v == -1 else v for v in rest]
    target = tuple(rest)
    if int(np.prod(target)) != size:
        raise _err(node, f"Reshape {shape} -> {target} changes the per-sample size")
    b.set_affine(node, src, ReshapeMap(shape, target), None)


def _avgpool(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    src, shape = b.src(node)
    if len(shape) != 3:
        raise _err(node, "pooling input must be [C, H, W]")
    c, h, wd = shape
    if node.op_type == "GlobalAveragePool":
        k, strides, p = (h, wd), (1, 1), (0, 0, 0, 0)
    else:
        if "kernel_shape" not in a:
            raise _err(node, "attribute 'kernel_shape' is required")
        k, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
        p = _spatial_pads(node, a, (h, wd), k, strides)
        if any(p[i] >= k[i % 2] for i in range(4)):
            raise _err(node, f"attribute 'pads' = {list(p)} must be smaller than the kernel {list(k)}")
        span = (h + p[0] + p[2] - k[0], wd + p[1] + p[3] - k[1])
        if a.get("ceil_mode", 0) and any(s >= 0 and s % st for s, st in zip(span, strides, strict=True)):
            raise _err(node, "attribute 'ceil_mode' = 1 changes the output size (not supported)")
    w = torch.zeros(c, c, *k, dtype=torch.float64)
    w[range(c), range(c)] = 1.0 / (k[0] * k[1])
    lmap = Conv2dMap(w, strides, (p[0], p[1], p[2], p[3]), shape)
    _check_out(node, lmap)
    b.set_affine(node, src, lmap, None)
    if any(p) and not a.get("count_include_pad", 0):
        # divisor counts only in-image taps: rescale each output position
        ones = torch.ones(1, *shape, dtype=torch.float64)
        cnt = Conv2dMap(torch.ones_like(w) * (w > 0), strides, lmap.pads, shape).apply(ones)[0]
        full = float(k[0] * k[1])
        out = b.where[node.output[0]]
        b.where[node.output[0]] = b.add_affine(
            out, ScaleMap(full / cnt), None, _name(node) + "/count_exclude_pad"
        )


def _binary(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    """Add / Sub / Mul / Div with one image-dependent operand and a constant (or Add of two)."""
    op, ins, name = node.op_type, node.input, _name(node)
    if ins[0] in b.where and ins[1] in b.where:
        if op != "Add":
            raise _err(node, "product or difference of two dynamic tensors")
        s0, s1 = b.where[ins[0]], b.where[ins[1]]
        if b.nodes[s0].shape != b.nodes[s1].shape:
            raise _err(node, "Add with broadcasting between dynamic tensors")
        b.nodes.append(Node("add", (s0, s1), b.nodes[s0].shape, name))
        b.where[node.output[0]] = len(b.nodes) - 1
        return
    left = ins[0] in b.where
    src = b.where[ins[0] if left else ins[1]]
    shape = b.nodes[src].shape
    cfull = b.const_full(b.weight(node, 1 if left else 0), shape, node)
    if op == "Add":
        b.set_affine(node, src, ReshapeMap(shape, shape), cfull)
    elif op == "Sub":
        if left:
            b.set_affine(node, src, ReshapeMap(shape, shape), -cfull)
        else:
            b.set_affine(node, src, ScaleMap(-torch.ones(shape, dtype=torch.float64)), cfull)
    elif op == "Mul":
        b.set_affine(node, src, ScaleMap(cfull), None)
    else:
        if not left:
            raise _err(node, "division by a dynamic tensor")
        if not torch.all(cfull != 0):
            raise _err(node, "division by zero")
        b.set_affine(node, src, ScaleMap(1.0 / cfull), None)


# ---- MaxMin: Slice / Slice / Max / Min / Concat on one image tensor, lowered to affine + ReLU + Add -----


@dataclass(frozen=True)
class _MaxMinPart:
    """A matched part of a MaxMin: ``kind`` "half" (``half`` 0 or 1 of node ``src``) or "max" / "min" (of
    the two half tensors named ``halves``, in the order read)."""

    kind: str
    src: int
    node: onnx.NodeProto
    half: int = -1
    halves: tuple[str, ...] = ()


_MAXMIN = "MaxMin (Slice / Slice / Max / Min / Concat splitting dim 1 into halves)"


def _only_read_by(b: _Builder, node: onnx.NodeProto, want: list[str]) -> None:
    """The node's output is read by exactly the ops ``want`` (one read each) and is no graph output."""
    out = node.output[0]
    readers = sorted(n.op_type for n in b.readers.get(out, []))
    if out in b.graph_outputs or readers != sorted(want):
        shown = ", ".join(readers) or "nothing"
        raise _err(
            node,
            f"on an image-dependent tensor this op is supported only inside {_MAXMIN}: its output must be "
            f"read once each by {' and '.join(want)} (read by: {shown})",
        )


def _slice_dynamic(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    """A Slice of an image tensor [B, C, ...]: one half of dim 1 (step 1), read by one Max and one Min."""
    src, shape = b.src(node)
    params = [None] + [b.value(node, i) if b.has_input(node, i) else None for i in range(1, len(node.input))]
    rank = len(shape) + 1
    starts, ends, axes, steps = _slice_params(node, a, params, rank)
    if axes != [1]:
        raise _err(
            node, f"a Slice of an image-dependent tensor must slice axis 1 only (axes {axes}) ({_MAXMIN})"
        )
    c = shape[0]
    probe = np.arange(c, dtype=np.int64).reshape(1, c, *([1] * (rank - 2)))
    picked = _apply_slice(probe, starts, ends, axes, steps).reshape(-1).tolist()
    h = c // 2
    halves = [list(range(0, h)), list(range(h, 2 * h))]
    if c % 2 or h == 0 or picked not in halves:
        raise _err(
            node,
            f"a Slice of an image-dependent tensor must take exactly the first or second half of its {c} "
            f"channels ({_MAXMIN}); it takes indices {picked[:8]}{'…' if len(picked) > 8 else ''}",
        )
    _only_read_by(b, node, ["Max", "Min"])
    b.pending[node.output[0]] = _MaxMinPart("half", src, node, half=halves.index(picked))


def _maxmin_dynamic(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    """Max / Min of the two halves of one image tensor (read only by the MaxMin Concat)."""
    ins = list(node.input)
    parts = [b.pending.get(i) for i in ins]
    if (
        len(ins) != 2
        or any(p is None or p.kind != "half" for p in parts)
        or parts[0].src != parts[1].src
        or {parts[0].half, parts[1].half} != {0, 1}
    ):
        raise _err(
            node,
            f"on image-dependent tensors {node.op_type} is supported only inside {_MAXMIN}: its two inputs "
            "must be the first and the second half of one tensor",
        )
    _only_read_by(b, node, ["Concat"])
    b.pending[node.output[0]] = _MaxMinPart(node.op_type.lower(), parts[0].src, node, halves=tuple(ins))


def _concat_dynamic(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    """Concat(Max(a, b), Min(a, b), axis=1) of the two halves: MaxMin, lowered to
    swap(x) + split(relu(diff(x))) (linear_maps.PairMap), the final Add naming x as its Lipschitz source."""
    ins = list(node.input)
    parts = [b.pending.get(i) for i in ins]
    if (
        len(ins) != 2
        or parts[0] is None
        or parts[1] is None
        or (parts[0].kind, parts[1].kind) != ("max", "min")
    ):
        raise _err(
            node,
            f"on image-dependent tensors Concat is supported only inside {_MAXMIN}: its inputs must be "
            "Max(a, b) then Min(a, b) of the two halves",
        )
    mx, mn = parts
    if mx.src != mn.src or set(mx.halves) != set(mn.halves):
        raise _err(node, f"Max and Min of different tensors ({_MAXMIN})")
    src = mx.src
    shape = b.nodes[src].shape
    if "axis" not in a or _axis(node, a["axis"], len(shape) + 1) != 1:
        raise _err(node, f"attribute 'axis' = {a.get('axis')} is not supported (accepted: 1) ({_MAXMIN})")
    for name in (*ins, *mx.halves):
        b.pending.pop(name, None)
    name = _name(node)
    d = b.add_affine(src, PairMap("diff", shape), None, name + "/maxmin_diff")
    b.nodes.append(Node("relu", (d,), b.nodes[d].shape, name + "/maxmin_relu"))
    e = b.add_affine(len(b.nodes) - 1, PairMap("split", shape), None, name + "/maxmin_split")
    p = b.add_affine(src, PairMap("swap", shape), None, name + "/maxmin_swap")
    b.nodes.append(Node("add", (p, e), shape, name, lipschitz_source=src))
    b.where[node.output[0]] = len(b.nodes) - 1


def _shape_dynamic(b: _Builder, node: onnx.NodeProto, a: dict) -> None:
    _, shape = b.src(node)
    sl = slice(a.get("start", 0), a.get("end"))
    b.consts[node.output[0]] = np.array([_BATCH_SENTINEL, *shape], dtype=np.int64)[sl]
    alt = np.array([_BATCH_SENTINEL_2, *shape], dtype=np.int64)[sl]
    if not np.array_equal(alt, b.consts[node.output[0]]):
        b.alt[node.output[0]] = alt


# ---- constant evaluators: exact ONNX semantics on numpy values of the ONNX dtype -----------------------

Value = np.ndarray


def _fold_identity(node: onnx.NodeProto, a: dict, x: list) -> Value:
    return x[0]


def _fold_dropout(node: onnx.NodeProto, a: dict, x: list) -> Value:
    _check_inference(node, x[2] if len(x) > 2 else None)
    return x[0]


def _fold_constant(node: onnx.NodeProto, a: dict, x: list) -> Value:
    if len(a) != 1:
        raise _err(node, "exactly one value attribute is required")
    ((key, v),) = a.items()
    if key == "value":
        return numpy_helper.to_array(v)
    dtype = np.float32 if key.startswith("value_float") else np.int64
    return np.array(v, dtype=dtype)


def _fold_shape(node: onnx.NodeProto, a: dict, x: list) -> Value:
    return np.array(x[0].shape, dtype=np.int64)[a.get("start", 0) : a.get("end")]


def _fold_gather(node: onnx.NodeProto, a: dict, x: list) -> Value:
    data, idx = x
    if idx.dtype not in _INDEX_DTYPES:
        raise _err(node, f"indices of dtype {idx.dtype}")
    if data.ndim == 0:
        raise _err(node, "Gather of a scalar")
    axis = _axis(node, a.get("axis", 0), data.ndim)
    n = data.shape[axis]
    if np.any((idx < -n) | (idx >= n)):
        raise _err(node, f"index out of range for a dimension of size {n}")
    return np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)


def _axes(node: onnx.NodeProto, a: dict, x: list) -> list[int] | None:
    """Unsqueeze / Squeeze axes: the attribute (opset < 13) or the int64 input (opset >= 13)."""
    from_input = len(x) > 1 and x[1] is not None
    if "axes" in a and from_input:
        raise _err(node, "axes given both as attribute and as input")
    if from_input:
        if x[1].dtype != np.int64 or x[1].ndim != 1:
            raise _err(node, "axes input must be a 1-D int64 tensor")
        return [int(v) for v in x[1]]
    return None if "axes" not in a else [int(v) for v in a["axes"]]


def _fold_unsqueeze(node: onnx.NodeProto, a: dict, x: list) -> Value:
    axes = _axes(node, a, x)
    if axes is None:
        raise _err(node, "axes are required")
    rank = x[0].ndim + len(axes)
    norm = [_axis(node, v, rank, "axes entry") for v in axes]
    if len(set(norm)) != len(norm):
        raise _err(node, "repeated axes")
    return np.expand_dims(x[0], tuple(norm))


def _fold_squeeze(node: onnx.NodeProto, a: dict, x: list) -> Value:
    axes = _axes(node, a, x)
    if axes is None:
        return np.squeeze(x[0])
    norm = [_axis(node, v, x[0].ndim, "axes entry") for v in axes]
    if len(set(norm)) != len(norm) or any(x[0].shape[v] != 1 for v in norm):
        raise _err(node, "axes must be distinct dimensions of size 1")
    return np.squeeze(x[0], tuple(norm))


def _fold_concat(node: onnx.NodeProto, a: dict, x: list) -> Value:
    if "axis" not in a:
        raise _err(node, "attribute 'axis' is required")
    if any(v is None or v.ndim == 0 for v in x):
        raise _err(node, "inputs must have rank >= 1")
    if len({v.ndim for v in x}) != 1 or len({v.dtype for v in x}) != 1:
        raise _err(node, "inputs differ in rank or dtype")
    return np.concatenate(x, axis=_axis(node, a["axis"], x[0].ndim))


def _slice_params(node: onnx.NodeProto, a: dict, x: list, rank: int) -> tuple[list[int], ...]:
    """Slice's (starts, ends, axes, steps) from attributes (opset < 10) or inputs; axes normalized."""
    if len(x) == 1:  # opset < 10: attributes
        if "starts" not in a or "ends" not in a:
            raise _err(node, "attributes 'starts' and 'ends' are required")
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        params = [v if k < len(x) else None for k, v in enumerate(x[1:5], 1)]
        for v in params:
            if v is not None and (v.dtype not in _INDEX_DTYPES or v.ndim != 1):
                raise _err(node, "starts / ends / axes / steps must be 1-D int32 or int64")
        starts, ends = params[0], params[1]
        axes = None if len(params) < 3 else params[2]
        steps = None if len(params) < 4 else params[3]
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise _err(node, "starts, ends, axes and steps differ in length")
    axes = [_axis(node, v, rank, "axes entry") for v in axes]
    if len(set(axes)) != len(axes) or 0 in steps:
        raise _err(node, "repeated axes or a zero step")
    return starts, ends, axes, steps


def _apply_slice(data: np.ndarray, starts: list, ends: list, axes: list, steps: list) -> np.ndarray:
    """ONNX Slice semantics (negative indices count from the end, then clamped per step sign)."""
    sl = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        d = data.shape[ax]
        s, e = s + d if s < 0 else s, e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
            sl[ax] = slice(s, e, st)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
            sl[ax] = slice(s, None if e < 0 else e, st) if d else slice(0, 0)
    return data[tuple(sl)]


def _fold_slice(node: onnx.NodeProto, a: dict, x: list) -> Value:
    data = x[0]
    return _apply_slice(data, *_slice_params(node, a, x, data.ndim))


def _fold_cast(node: onnx.NodeProto, a: dict, x: list) -> Value:
    """ONNX Cast: nonzero -> True; bool -> 1/0; float -> int truncates (out of range is refused, ONNX
    leaves it undefined); int -> int keeps the low bits; rounding to a float is to nearest even, and a
    float16 target is refused where rounding directly or via float32 / float64 would differ."""
    if "to" not in a:
        raise _err(node, "attribute 'to' is required")
    t, v = np.dtype(_NP_TYPES[a["to"]]), x[0]
    if t == np.bool_:
        return v != 0
    if v.dtype == np.bool_:
        return v.astype(t)
    if t.kind == "f":
        out = v.astype(t)
        if t == np.float16 and v.dtype != np.float16:
            for via in (np.float32, np.float64):
                if not np.array_equal(v.astype(via).astype(t), out, equal_nan=True):
                    raise _err(node, "attribute 'to' = FLOAT16: the rounding of this constant is ambiguous")
        return out
    if v.dtype.kind == "f":
        w = np.trunc(v.astype(np.float64))
        info = np.iinfo(t)
        if not np.all(np.isfinite(w) & (w >= info.min) & (w < float(info.max) + 1.0)):
            raise _err(node, f"a value out of the range of {t} (undefined in ONNX)")
        return w.astype(t)
    return v.astype(t)


def _fold_binary(node: onnx.NodeProto, a: dict, x: list) -> Value:
    left, right = x
    if left.dtype != right.dtype or left.dtype == np.bool_:
        raise _err(node, f"operands of dtype {left.dtype} and {right.dtype}")
    op = node.op_type
    if op == "Div" and left.dtype.kind in "iu":  # integer Div truncates toward zero
        if np.any(right == 0):
            raise _err(node, "integer division by zero")
        if left.dtype.kind == "i" and np.any((left == np.iinfo(left.dtype).min) & (right == -1)):
            raise _err(node, "integer division overflows")
        q = np.floor_divide(left, right)
        fix = (np.remainder(left, right) != 0) & ((left < 0) != (right < 0))
        return (q + fix.astype(q.dtype)).astype(left.dtype)
    f = {"Mul": np.multiply, "Div": np.divide, "Sub": np.subtract, "Add": np.add}[op]
    return np.asarray(f(left, right)).astype(left.dtype)


def _eval_const(node: onnx.NodeProto, consts: dict, a: dict, *_: Any) -> np.ndarray:
    """Evaluate a constant-only node from ``consts`` (name -> value) with the op's exact evaluator."""
    spec = _OPS.get(node.op_type)
    if spec is None or spec.const is None:
        raise _err(node, "unsupported constant op")
    with np.errstate(all="ignore"):
        return np.asarray(spec.const(node, a, [consts[i] if i else None for i in node.input]))


# ---- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One supported op: accepted attributes, the converter on image-dependent inputs, the constant
    evaluator, how many outputs it may have (only the first may be consumed) and which constant inputs
    may carry the batch size through it (positions, or "all")."""

    attrs: dict[str, _Attr]
    dynamic: Callable[[_Builder, onnx.NodeProto, dict], None] | None = None
    const: Callable[[onnx.NodeProto, dict, list], Value] | None = None
    outputs: int = 1
    batch_inputs: Callable[[onnx.NodeProto, dict], set | str] | None = None


def _first(node: onnx.NodeProto, a: dict) -> set:
    return {0}


_BINARY = _Op({}, dynamic=_binary, const=_fold_binary)
_POOL_ATTRS = {
    "auto_pad": _str_in("NOTSET", "VALID"),
    "ceil_mode": _int_in(0, 1),
    "count_include_pad": _int_in(0, 1),
    "dilations": _NO_DILATION,
    "kernel_shape": _KERNEL,
    "pads": _PADS,
    "strides": _STRIDES,
}

_OPS: dict[str, _Op] = {
    "Conv": _Op(
        {
            "auto_pad": _str_in("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"),
            "dilations": _NO_DILATION,
            "group": _int_in(1),
            "kernel_shape": _KERNEL,
            "pads": _PADS,
            "strides": _STRIDES,
        },
        dynamic=_conv,
    ),
    "Gemm": _Op(
        {"alpha": _FINITE, "beta": _FINITE, "transA": _int_in(0), "transB": _int_in(0, 1)}, dynamic=_dense
    ),
    "MatMul": _Op({}, dynamic=_dense),
    "Relu": _Op({}, dynamic=_relu),
    "Flatten": _Op({"axis": _ANY_INT}, dynamic=_flatten),
    "Reshape": _Op({"allowzero": _int_in(0, 1)}, dynamic=_reshape),
    "BatchNormalization": _Op(
        {"epsilon": _FINITE, "momentum": _ANY_FLOAT, "training_mode": _int_in(0), "spatial": _int_in(1)},
        dynamic=_batchnorm,
        outputs=5,
    ),
    "Sub": _BINARY,
    "Div": _BINARY,
    "Mul": _BINARY,
    "Add": _BINARY,
    "AveragePool": _Op(_POOL_ATTRS, dynamic=_avgpool),
    "GlobalAveragePool": _Op({}, dynamic=_avgpool),
    "Identity": _Op({}, dynamic=_alias, const=_fold_identity, batch_inputs=_first),
    "Dropout": _Op(
        {"ratio": _ANY_FLOAT, "seed": _ANY_INT},
        dynamic=_dropout,
        const=_fold_dropout,
        outputs=2,
        batch_inputs=_first,
    ),
    "Constant": _Op(
        {
            "value": _TENSOR,
            "value_float": _ANY_FLOAT,
            "value_floats": _FLOAT_LIST,
            "value_int": _ANY_INT,
            "value_ints": _INT_LIST,
        },
        const=_fold_constant,
    ),
    "Shape": _Op({"start": _ANY_INT, "end": _ANY_INT}, dynamic=_shape_dynamic, const=_fold_shape),
    "Gather": _Op({"axis": _ANY_INT}, const=_fold_gather, batch_inputs=_first),
    "Unsqueeze": _Op({"axes": _INT_LIST}, const=_fold_unsqueeze, batch_inputs=_first),
    "Squeeze": _Op({"axes": _INT_LIST}, const=_fold_squeeze, batch_inputs=_first),
    "Concat": _Op(
        {"axis": _ANY_INT}, dynamic=_concat_dynamic, const=_fold_concat, batch_inputs=lambda node, a: "all"
    ),
    "Max": _Op({}, dynamic=_maxmin_dynamic),
    "Min": _Op({}, dynamic=_maxmin_dynamic),
    "Cast": _Op(
        {"to": _CAST_TO, "saturate": _int_in(0, 1)},
        const=_fold_cast,
        batch_inputs=lambda node, a: {0} if a.get("to") in (TensorProto.INT32, TensorProto.INT64) else set(),
    ),
    "Slice": _Op(
        {"starts": _INT_LIST, "ends": _INT_LIST, "axes": _INT_LIST},
        dynamic=_slice_dynamic,
        const=_fold_slice,
        batch_inputs=_first,
    ),
}
_MAXMIN_OPS = frozenset({"Max", "Min", "Concat"})  # the ops that may read a matched MaxMin part
SUPPORTED_OPS = tuple(_OPS)


def build_bound_graph(model: onnx.ModelProto, *, fold: bool = True) -> BoundGraph:
    """Translate an ONNX encoder (input [B, C, H, W], output [B, D]) into a BoundGraph.

    ``fold=True`` merges chains of affine nodes (the graph the bounds use); ``fold=False`` keeps one
    node per served ONNX op, the graph whose float32 rounding the error model charges. Raises
    ``UnsupportedModelError`` (naming the node) for anything outside the module's table.
    """
    b = _Builder(model)
    for node in model.graph.node:
        b.convert(node)
    return b.finish(fold)


def prune(graph: BoundGraph) -> BoundGraph:
    """Drop nodes the output does not depend on and renumber."""
    keep = {graph.output}
    for i in range(graph.output, -1, -1):
        if i in keep:
            keep.update(graph.nodes[i].inputs)
    keep.add(0)
    order = sorted(keep)
    remap = {old: new for new, old in enumerate(order)}
    nodes = []
    for old in order:
        n = graph.nodes[old]
        source = remap.get(n.lipschitz_source) if n.lipschitz_source is not None else None
        ins = tuple(remap[i] for i in n.inputs)
        nodes.append(replace(n, inputs=ins, lipschitz_source=source))
    return BoundGraph(nodes, remap[graph.output])


def _merge_chains(graph: BoundGraph) -> BoundGraph:
    """Merge an affine node into its affine consumer when it has no other consumer and the maps compose
    (never a node some MaxMin's ``lipschitz_source`` names: its value must stay in the graph)."""
    nodes = list(graph.nodes)
    changed = True
    while changed:
        changed = False
        g = BoundGraph(nodes, graph.output)
        sources = {n.lipschitz_source for n in nodes if n.lipschitz_source is not None}
        for j, n in enumerate(nodes):
            if n.kind != "affine":
                continue
            i = n.inputs[0]
            prev = nodes[i]
            if prev.kind != "affine" or len(g.consumers[i]) != 1 or i in sources:
                continue
            lmap = compose(prev.lmap, n.lmap)
            if lmap is None:
                continue
            bias = n.lmap.apply(prev.bias[None])[0] + n.bias  # second(first(0))
            nodes[j] = Node("affine", prev.inputs, n.shape, f"{prev.name}+{n.name}", lmap, bias,
                            value_of=n.value_of)
            nodes[i] = Node("affine", prev.inputs, prev.shape, prev.name + "/dead", prev.lmap, prev.bias)
            graph = prune(BoundGraph(nodes, graph.output))
            nodes = list(graph.nodes)
            changed = True
            break
    # identity reshapes (e.g. from constant Add) stay as bias-only affine nodes; drop true no-ops
    return graph


def _rewire_pair_differences(graph: BoundGraph) -> BoundGraph:
    """A MaxMin difference ``diff(W v + c)`` whose affine input also feeds the swap becomes its own affine
    node on v: ``(diff ∘ W) v + diff(c)`` (a conv / dense map with the paired rows subtracted). Same
    values; the difference's bounds then see the cancellation (exact per neuron when v is the image)."""
    nodes = list(graph.nodes)
    for j, n in enumerate(nodes):
        if n.kind != "affine" or not isinstance(n.lmap, PairMap) or n.lmap.mode != "diff":
            continue
        prev = nodes[n.inputs[0]]
        if prev.kind != "affine":
            continue
        lmap = compose(prev.lmap, n.lmap)
        if lmap is None or isinstance(lmap, PairMap):
            continue
        bias = n.lmap.apply(prev.bias[None])[0] + n.bias
        nodes[j] = Node("affine", prev.inputs, n.shape, f"{prev.name}+{n.name}", lmap, bias,
                        value_of=n.value_of)
    return BoundGraph(nodes, graph.output)


def fold_affine(graph: BoundGraph) -> BoundGraph:
    """Fold chains of affine nodes, then compute each MaxMin difference directly from the folded chain's
    input (after the chains are merged, so that normalization still folds into the first conv).

    Every node of the result carries ``value_of``: the index in ``graph`` of the node whose value it
    computes."""
    marked = BoundGraph([replace(n, value_of=i) for i, n in enumerate(graph.nodes)], graph.output)
    return _merge_chains(_rewire_pair_differences(_merge_chains(marked)))
