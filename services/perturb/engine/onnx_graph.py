"""ONNX encoder -> bound graph: affine / ReLU / Add nodes with static per-sample shapes.

Input normalization, BatchNormalization and pooling become affine nodes; consecutive affine nodes
are folded (BN into its conv, normalization into the first conv) so that operator norms are taken
of the composed maps. Any op outside the supported set fails at load time, naming op and node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from services.perturb.engine.linear_maps import (
    Conv2dMap,
    DenseMap,
    LinearMap,
    ReshapeMap,
    ScaleMap,
    Shape,
    compose,
)

SUPPORTED_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Relu",
    "Flatten",
    "Reshape",
    "BatchNormalization",
    "Sub",
    "Div",
    "Mul",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
    "Identity",
    "Constant",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Concat",
    "Squeeze",
    "Cast",
    "Slice",
    "Dropout",
)
_SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Squeeze", "Cast", "Slice", "Constant")
_BATCH_SENTINEL = 7919  # a prime stand-in for the dynamic batch size while evaluating shape subgraphs


class UnsupportedModelError(ValueError):
    """The ONNX model uses an op or a configuration the bound engine cannot bound."""


@dataclass
class Node:
    """A bound-graph node; ``kind``: "input", "affine" (lmap + full-shape bias), "relu" or "add"."""

    kind: str
    inputs: tuple[int, ...]
    shape: Shape
    name: str
    lmap: LinearMap | None = None
    bias: torch.Tensor | None = None


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
            Node(
                n.kind,
                n.inputs,
                n.shape,
                n.name,
                None if n.lmap is None else n.lmap.to(dtype),
                None if n.bias is None else n.bias.to(dtype),
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


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _err(node: onnx.NodeProto, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{why}: op {node.op_type} at node '{node.name or node.output[0]}'")


def load_onnx_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX model from a path, bytes or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    return onnx.load(os.fspath(source))


def build_bound_graph(model: onnx.ModelProto, *, fold: bool = True) -> BoundGraph:
    """Translate an ONNX encoder (input [B, C, H, W], output [B, D]) into a BoundGraph.

    ``fold=True`` merges chains of affine nodes (the graph the bounds use); ``fold=False`` keeps one
    node per served ONNX op, the graph whose float32 rounding the error model charges.
    """
    g = model.graph
    for node in g.node:
        if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
            raise _err(node, "unsupported op")
    inits = {
        t.name: numpy_helper.to_array(t).astype(np.float64)
        if numpy_helper.to_array(t).dtype.kind == "f"
        else numpy_helper.to_array(t)
        for t in g.initializer
    }
    graph_inputs = [i for i in g.input if i.name not in inits]
    if len(graph_inputs) != 1 or len(g.output) != 1:
        raise UnsupportedModelError("the encoder must have exactly one input and one output")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(not d.HasField("dim_value") for d in dims[1:]):
        raise UnsupportedModelError("the input must be [B, C, H, W] with static C, H, W")
    in_shape = tuple(int(d.dim_value) for d in dims[1:])

    consts: dict[str, np.ndarray] = dict(inits)  # constant tensors (weights and shape arithmetic)
    nodes: list[Node] = [Node("input", (), in_shape, graph_inputs[0].name)]
    where: dict[str, int] = {graph_inputs[0].name: 0}  # dynamic tensor name -> node index

    def add_affine(src: int, lmap: LinearMap, bias: torch.Tensor | None, name: str) -> int:
        b = torch.zeros(lmap.out_shape, dtype=torch.float64) if bias is None else bias.to(torch.float64)
        b = b.expand(lmap.out_shape).clone()
        nodes.append(Node("affine", (src,), tuple(lmap.out_shape), name, lmap, b))
        return len(nodes) - 1

    def const_full(arr: np.ndarray, shape: Shape, node: onnx.NodeProto) -> torch.Tensor:
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == len(shape) + 1:
            if a.shape[0] != 1:
                raise _err(node, "constant varies along the batch dimension")
            a = a[0]
        try:
            return torch.from_numpy(np.broadcast_to(a, shape).copy())
        except ValueError as exc:
            raise _err(node, f"constant of shape {a.shape} does not broadcast to {shape}") from exc

    for node in g.node:
        op, name, a = node.op_type, node.name or node.output[0], _attrs(node)
        ins = [i for i in node.input]
        dyn = [i for i in ins if i in where]
        if not dyn:  # pure constant / shape arithmetic
            if op not in _SHAPE_OPS and op not in ("Identity", "Mul", "Div", "Sub", "Add"):
                raise _err(node, "constant-only node not supported")
            consts[node.output[0]] = _eval_const(node, consts, a, nodes, where)
            continue
        if op in ("Shape",):
            shp = (_BATCH_SENTINEL, *nodes[where[ins[0]]].shape)
            consts[node.output[0]] = np.array(shp, dtype=np.int64)
            continue
        src = where[dyn[0]]
        shape = nodes[src].shape
        out = node.output[0]
        if op in ("Identity", "Dropout"):
            where[out] = src
        elif op == "Relu":
            nodes.append(Node("relu", (src,), shape, name))
            where[out] = len(nodes) - 1
        elif op == "Conv":
            if len(shape) != 3:
                raise _err(node, "Conv input must be [C, H, W]")
            w = torch.from_numpy(_const(consts, ins[1], node))
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _err(node, "grouped or dilated Conv")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise _err(node, "auto_pad")
            p = list(a.get("pads", [0, 0, 0, 0]))
            lmap = Conv2dMap(w, tuple(a.get("strides", [1, 1])), (p[0], p[1], p[2], p[3]), shape)
            bias = None
            if len(ins) > 2 and ins[2]:
                bias = torch.from_numpy(_const(consts, ins[2], node)).reshape(-1, 1, 1).expand(lmap.out_shape)
            where[out] = add_affine(src, lmap, bias, name)
        elif op == "BatchNormalization":
            scale, b, mean, var = (_const(consts, i, node) for i in ins[1:5])
            s = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            sh = (-1,) + (1,) * (len(shape) - 1)
            lmap = ScaleMap(torch.from_numpy(np.broadcast_to(s.reshape(sh), shape).copy()))
            bias = torch.from_numpy(np.broadcast_to((b - mean * s).reshape(sh), shape).copy())
            where[out] = add_affine(src, lmap, bias, name)
        elif op in ("Gemm", "MatMul"):
            if len(shape) != 1 or ins[0] not in where:
                raise _err(node, f"{op} needs a flat [B, D] dynamic first input")
            w = _const(consts, ins[1], node)
            if op == "Gemm":
                if a.get("transA", 0):
                    raise _err(node, "transA")
                w = w.T if a.get("transB", 0) else w
                w = w * a.get("alpha", 1.0)
            wt = torch.from_numpy(np.ascontiguousarray(w.T))  # [out, in]
            lmap = DenseMap(wt, shape, (int(wt.shape[0]),))
            bias = None
            if op == "Gemm" and len(ins) > 2 and ins[2]:
                bias = torch.from_numpy(
                    np.broadcast_to(_const(consts, ins[2], node) * a.get("beta", 1.0), lmap.out_shape).copy()
                )
            where[out] = add_affine(src, lmap, bias, name)
        elif op in ("Flatten", "Reshape"):
            if op == "Flatten":
                if a.get("axis", 1) != 1:
                    raise _err(node, "Flatten axis != 1")
                target: Shape = (int(np.prod(shape)),)
            else:
                t = [int(v) for v in _const(consts, ins[1], node)]
                if t[0] not in (0, -1, _BATCH_SENTINEL) and not (t[0] == 1 and -1 in t[1:] and False):
                    raise _err(node, "Reshape must keep the batch dimension first")
                rest = [shape[i] if v == 0 and i < len(shape) else v for i, v in enumerate(t[1:])]
                if -1 in rest:
                    known = int(np.prod([v for v in rest if v != -1]))
                    rest = [int(np.prod(shape)) // known if v == -1 else v for v in rest]
                target = tuple(rest)
                if int(np.prod(target)) != int(np.prod(shape)):
                    raise _err(node, f"Reshape {shape} -> {target} changes the per-sample size")
            where[out] = add_affine(src, ReshapeMap(shape, target), None, name)
        elif op in ("AveragePool", "GlobalAveragePool"):
            if len(shape) != 3:
                raise _err(node, "pooling input must be [C, H, W]")
            c, h, wd = shape
            k = (h, wd) if op == "GlobalAveragePool" else tuple(a["kernel_shape"])
            strides = (1, 1) if op == "GlobalAveragePool" else tuple(a.get("strides", [1, 1]))
            p = [0, 0, 0, 0] if op == "GlobalAveragePool" else list(a.get("pads", [0, 0, 0, 0]))
            if a.get("ceil_mode", 0) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise _err(node, "ceil_mode / auto_pad pooling")
            w = torch.zeros(c, c, *k, dtype=torch.float64)
            w[range(c), range(c)] = 1.0 / (k[0] * k[1])
            lmap = Conv2dMap(w, strides, (p[0], p[1], p[2], p[3]), shape)
            where[out] = add_affine(src, lmap, None, name)
            if any(p) and not a.get("count_include_pad", 0):
                # divisor counts only in-image taps: rescale each output position
                ones = torch.ones(1, *shape, dtype=torch.float64)
                cnt = Conv2dMap(torch.ones_like(w) * (w > 0), strides, lmap.pads, shape).apply(ones)[0]
                full = float(k[0] * k[1])
                where[out] = add_affine(where[out], ScaleMap(full / cnt), None, name + "/count_exclude_pad")
        elif op in ("Sub", "Add", "Div", "Mul"):
            if len(dyn) == 2:
                if op != "Add" or len(ins) != 2:
                    raise _err(node, "product or difference of two dynamic tensors")
                s0, s1 = where[ins[0]], where[ins[1]]
                if nodes[s0].shape != nodes[s1].shape:
                    raise _err(node, "Add with broadcasting between dynamic tensors")
                nodes.append(Node("add", (s0, s1), shape, name))
                where[out] = len(nodes) - 1
                continue
            ci = ins[1] if ins[0] in where else ins[0]
            cfull = const_full(_const(consts, ci, node), shape, node)
            if op == "Add":
                where[out] = add_affine(src, ReshapeMap(shape, shape), cfull, name)
            elif op == "Sub":
                if ins[0] in where:
                    where[out] = add_affine(src, ReshapeMap(shape, shape), -cfull, name)
                else:
                    neg = ScaleMap(-torch.ones(shape, dtype=torch.float64))
                    where[out] = add_affine(src, neg, cfull, name)
            elif op == "Mul":
                where[out] = add_affine(src, ScaleMap(cfull), None, name)
            else:
                if ins[0] not in where:
                    raise _err(node, "division by a dynamic tensor")
                if not torch.all(cfull != 0):
                    raise _err(node, "division by zero")
                where[out] = add_affine(src, ScaleMap(1.0 / cfull), None, name)
        else:
            raise _err(node, "op not supported on dynamic tensors")

    out_name = g.output[0].name
    if out_name not in where:
        raise UnsupportedModelError(f"output '{out_name}' is not computed from the input")
    out_idx = where[out_name]
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
    pruned = prune(BoundGraph(nodes, out_idx))
    return fold_affine(pruned) if fold else pruned


def _const(consts: dict, name: str, node: onnx.NodeProto) -> np.ndarray:
    if name not in consts:
        raise _err(node, f"input '{name}' must be a constant")
    return consts[name]


def _eval_const(node: onnx.NodeProto, consts: dict, a: dict, nodes: list[Node], where: dict) -> np.ndarray:
    """Evaluate a constant-only node (shape arithmetic, Constant)."""
    op = node.op_type
    if op == "Constant":
        v = (
            numpy_helper.to_array(a["value"])
            if "value" in a
            else np.array(
                a.get("value_float", a.get("value_int", a.get("value_floats", a.get("value_ints"))))
            )
        )
        return v.astype(np.float64) if v.dtype.kind == "f" else v
    x = [consts[i] if i else None for i in node.input]
    if any(v is None for v in x[:1]):
        raise _err(node, "missing constant input")
    if op == "Identity" or op == "Cast":
        return x[0]
    if op == "Gather":
        return np.take(x[0], x[1], axis=a.get("axis", 0))
    if op == "Unsqueeze":
        axes = a.get("axes", list(x[1]) if len(x) > 1 and x[1] is not None else [])
        return np.expand_dims(x[0], tuple(int(v) for v in axes))
    if op == "Squeeze":
        axes = a.get("axes", list(x[1]) if len(x) > 1 and x[1] is not None else None)
        return np.squeeze(x[0], None if axes is None else tuple(int(v) for v in axes))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in x], axis=a.get("axis", 0))
    if op == "Slice":
        starts, ends = x[1], x[2]
        axes = x[3] if len(x) > 3 and x[3] is not None else range(len(starts))
        steps = x[4] if len(x) > 4 and x[4] is not None else [1] * len(starts)
        sl = [slice(None)] * x[0].ndim
        for s, e, ax, st in zip(starts, ends, axes, steps, strict=False):
            sl[int(ax)] = slice(int(s), int(min(e, 2**62)), int(st))
        return x[0][tuple(sl)]
    if op in ("Mul", "Div", "Sub", "Add"):
        f = {"Mul": np.multiply, "Div": np.divide, "Sub": np.subtract, "Add": np.add}[op]
        return f(x[0], x[1])
    raise _err(node, "unsupported constant op")


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
        nodes.append(Node(n.kind, tuple(remap[i] for i in n.inputs), n.shape, n.name, n.lmap, n.bias))
    return BoundGraph(nodes, remap[graph.output])


def fold_affine(graph: BoundGraph) -> BoundGraph:
    """Merge an affine node into its affine consumer when it has no other consumer and the maps compose."""
    nodes = list(graph.nodes)
    changed = True
    while changed:
        changed = False
        g = BoundGraph(nodes, graph.output)
        for j, n in enumerate(nodes):
            if n.kind != "affine":
                continue
            i = n.inputs[0]
            prev = nodes[i]
            if prev.kind != "affine" or len(g.consumers[i]) != 1:
                continue
            lmap = compose(prev.lmap, n.lmap)
            if lmap is None:
                continue
            bias = n.lmap.apply(prev.bias[None])[0] + n.bias  # second(first(0))
            nodes[j] = Node("affine", prev.inputs, n.shape, f"{prev.name}+{n.name}", lmap, bias)
            nodes[i] = Node("affine", prev.inputs, prev.shape, prev.name + "/dead", prev.lmap, prev.bias)
            graph = prune(BoundGraph(nodes, graph.output))
            nodes = list(graph.nodes)
            changed = True
            break
    # identity reshapes (e.g. from constant Add) stay as bias-only affine nodes; drop true no-ops
    return graph
