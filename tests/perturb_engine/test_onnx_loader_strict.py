"""The ONNX loader refuses what it cannot model exactly, and models exactly what it accepts.

Rejections: each case builds a tiny graph with onnx.helper that the loader used to accept and misread
(or accept while ONNX Runtime computes something else); it must now raise UnsupportedModelError
naming the node (and the attribute). Differential: for every supported op over a range of attribute
values, the bound graph (folded and unfolded) computes what ONNX Runtime computes on random inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from services.perturb.engine import UnsupportedModelError
from services.perturb.engine.onnx_graph import build_bound_graph

IN = "images"
OUT = "features"


def _model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray] | None = None,
    in_shape: tuple[int, ...] = (2, 5, 5),
    opset: int = 17,
    in_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """images [B, *in_shape] -> features; initializers keep their numpy dtype."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(IN, in_type, ["B", *in_shape])],
        [helper.make_tensor_value_info(OUT, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _node(op: str, ins: list[str], outs: list[str] | None = None, **attrs) -> onnx.NodeProto:
    outs = outs or [OUT]
    return helper.make_node(op, ins, outs, name=f"{op.lower()}_{outs[0]}", **attrs)


def _const(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(np.asarray(value, dtype))
    )


def _f32(rng: np.random.Generator, *shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {IN: x})[0]


def _check_matches_ort(model: onnx.ModelProto, in_shape: tuple[int, ...], fold: bool, seed: int = 0) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, (3, *in_shape)).astype(np.float32)
    ref = _ort(model, x).reshape(3, -1).astype(np.float64)
    got = build_bound_graph(model, fold=fold).forward(torch.tensor(x, dtype=torch.float64)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _rejects(model: onnx.ModelProto, *words: str) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        build_bound_graph(model)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


# ---- the three misreads of the issue --------------------------------------------------------------------


def test_dilated_average_pool_is_refused():
    """k=2, dilation 2 on 3x3, then a global average: the taps are the corners, not a 2x2 block."""
    model = _model(
        [
            _node("AveragePool", [IN], ["p"], kernel_shape=[2, 2], dilations=[2, 2]),
            _node("GlobalAveragePool", ["p"], ["g"]),
            _node("Flatten", ["g"], axis=1),
        ],
        in_shape=(1, 3, 3),
        opset=19,
    )
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 1.0  # the centre is no tap of the dilated pool (the corners are)
    assert _ort(model, x)[0, 0] == 0.0  # an undilated 2x2 pool, as the loader used to read it, gives 1/4
    _rejects(model, "attribute 'dilations'", "averagepool_p")


def test_cast_is_folded_exactly():
    """x * Cast(Cast(0.3 -> BOOL) -> FLOAT) is x * 1.0 when run; it used to be bounded as x * 0.3."""
    model = _model(
        [
            _const("c", 0.3),
            _node("Cast", ["c"], ["cb"], to=TensorProto.BOOL),
            _node("Cast", ["cb"], ["cf"], to=TensorProto.FLOAT),
            _node("Mul", [IN, "cf"], ["m"]),
            _node("Flatten", ["m"]),
        ]
    )
    x = np.random.default_rng(1).random((2, 2, 5, 5)).astype(np.float32)
    for fold in (True, False):
        got = build_bound_graph(model, fold=fold).forward(torch.tensor(x, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, _ort(model, x), rtol=0, atol=0)
        np.testing.assert_array_equal(got, x.reshape(2, -1))


@pytest.mark.parametrize("mode", ["initializer", "constant_node"])
def test_dropout_in_training_mode_is_refused(mode):
    nodes = [
        _node("Dropout", [IN, "ratio", "train"], ["d"]),
        _node("Flatten", ["d"]),
    ]
    inits = {"ratio": np.array(0.5, np.float32)}
    if mode == "initializer":
        inits["train"] = np.array(True)
    else:
        nodes.insert(0, _const("train", True, np.bool_))
    _rejects(_model(nodes, inits, opset=13), "training_mode", "dropout_d")


def test_dropout_mask_consumed_is_refused():
    model = _model(
        [
            _node("Dropout", [IN], ["d", "mask"]),
            _node("Identity", ["mask"], ["mask_copy"]),
            _node("Flatten", ["d"]),
        ],
        opset=13,
    )
    _rejects(model, "output 'mask' is used", "dropout_d")


def test_batchnorm_running_stat_consumed_is_refused():
    c = np.ones(2, np.float32)
    model = _model(
        [
            _node("BatchNormalization", [IN, "s", "b", "m", "v"], ["y", "running_mean"]),
            _node("Identity", ["running_mean"], ["rm"]),
            _node("Flatten", ["y"]),
        ],
        {"s": c, "b": c, "m": c, "v": c},
        opset=15,
    )
    _rejects(model, "output 'running_mean' is used", "batchnormalization_y")


# ---- refused attributes, values and graphs ----------------------------------------------------------------


def _conv_model(k: int = 3, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return _model(
        [_node("Conv", [IN, "W"], ["c"], **attrs), _node("Flatten", ["c"])],
        {"W": _f32(rng, 3, 2, k, k)},
    )


def _pool_model(op: str = "AveragePool", opset: int = 19, **attrs) -> onnx.ModelProto:
    return _model([_node(op, [IN], ["p"], **attrs), _node("Flatten", ["p"])], in_shape=(2, 6, 6), opset=opset)


REFUSED: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[str, ...]]] = {
    "conv_group": (lambda: _conv_model(group=2), ("attribute 'group'", "conv_c")),
    "conv_dilations": (lambda: _conv_model(dilations=[2, 2]), ("attribute 'dilations'", "conv_c")),
    "conv_kernel_shape_mismatch": (
        lambda: _conv_model(kernel_shape=[2, 2]),
        ("attribute 'kernel_shape'", "conv_c"),
    ),
    "conv_unknown_attribute": (
        lambda: _conv_model(padding_mode="reflect"),
        ("attribute 'padding_mode'", "conv_c"),
    ),
    "conv_auto_pad_negative_padding": (
        lambda: _conv_model(k=1, auto_pad="SAME_UPPER", strides=[3, 3]),  # ORT would crop 5 -> 4
        ("attribute 'auto_pad'", "conv_c"),
    ),
    "conv_pads_with_auto_pad": (
        lambda: _conv_model(auto_pad="VALID", pads=[1, 1, 1, 1]),
        ("attribute 'pads'", "conv_c"),
    ),
    "avgpool_ceil_mode_changes_size": (
        lambda: _pool_model(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        ("attribute 'ceil_mode'", "averagepool_p"),
    ),
    "avgpool_same_padding": (
        lambda: _pool_model(kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        ("attribute 'auto_pad'", "averagepool_p"),
    ),
    "avgpool_pads_not_below_kernel": (
        lambda: _pool_model(kernel_shape=[2, 2], pads=[2, 0, 0, 0]),
        ("attribute 'pads'", "averagepool_p"),
    ),
    "relu_unknown_attribute": (
        lambda: _model([_node("Relu", [IN], ["r"], alpha=0.1), _node("Flatten", ["r"])]),
        ("attribute 'alpha'", "relu_r"),
    ),
    "attribute_not_in_the_opset": (  # Squeeze takes its axes as an input from opset 13 on
        lambda: _model(
            [
                _const("c", [[0.5, 2.0]]),
                _node("Squeeze", ["c"], ["k"], axes=[0]),
                _node("Mul", [IN, "k"], ["m"]),
                _node("Flatten", ["m"]),
            ],
            in_shape=(2, 5, 2),
            opset=13,
        ),
        ("attribute 'axes'", "squeeze_k"),
    ),
    "gemm_transA": (
        lambda: _model(
            [_node("Flatten", [IN], ["f"]), _node("Gemm", ["f", "W"], transA=1)],
            {"W": np.ones((50, 3), np.float32)},
        ),
        ("attribute 'transA'", "gemm_features"),
    ),
    "batchnorm_training_mode": (
        lambda: _model(
            [
                _node("BatchNormalization", [IN, "s", "b", "m", "v"], ["y"], training_mode=1),
                _node("Flatten", ["y"]),
            ],
            {k: np.ones(2, np.float32) for k in "sbmv"},
            opset=15,
        ),
        ("attribute 'training_mode'", "batchnormalization_y"),
    ),
    "flatten_axis": (
        lambda: _model([_node("Flatten", [IN], axis=2)]),
        ("attribute 'axis'", "flatten_features"),
    ),
    "reshape_allowzero_with_zero": (
        lambda: _model(
            [_node("Reshape", [IN, "t"], allowzero=1)], {"t": np.array([0, -1], np.int64)}, opset=14
        ),
        ("allowzero", "reshape_features"),
    ),
    "constant_value_string": (
        lambda: _model(
            [
                helper.make_node("Constant", [], ["s"], name="const_s", value_string="x"),
                _node("Flatten", [IN]),
            ]
        ),
        ("attribute 'value_string'", "const_s"),
    ),
    "constant_sparse_value": (
        lambda: _model(
            [
                helper.make_node(
                    "Constant",
                    [],
                    ["s"],
                    name="const_s",
                    sparse_value=helper.make_sparse_tensor(
                        numpy_helper.from_array(np.array([1.0], np.float32), "v"),
                        numpy_helper.from_array(np.array([0], np.int64), "i"),
                        [2],
                    ),
                ),
                _node("Flatten", [IN]),
            ]
        ),
        ("attribute 'sparse_value'", "const_s"),
    ),
    "cast_to_bfloat16": (
        lambda: _model(
            [_const("c", 0.3), _node("Cast", ["c"], ["h"], to=TensorProto.BFLOAT16), _node("Flatten", [IN])]
        ),
        ("attribute 'to'", "cast_h"),
    ),
    "cast_float_out_of_int_range": (
        lambda: _model(
            [
                _const("c", 300.0),
                _node("Cast", ["c"], ["i"], to=TensorProto.INT8),
                _node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
                _node("Mul", [IN, "f"], ["m"]),
                _node("Flatten", ["m"]),
            ]
        ),
        ("out of the range", "cast_i"),
    ),
    "cast_float16_double_rounding": (
        lambda: _model(
            [
                _const("c", 1 + 2.0**-11 + 2.0**-40, np.float64),
                _node("Cast", ["c"], ["h"], to=TensorProto.FLOAT16),
                _node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
                _node("Mul", [IN, "f"], ["m"]),
                _node("Flatten", ["m"]),
            ]
        ),
        ("FLOAT16", "cast_h"),
    ),
    "non_float32_constant_operand": (
        lambda: _model([_node("Mul", [IN, "c"], ["m"]), _node("Flatten", ["m"])], {"c": np.array(2.0)}),
        ("float64", "mul_m"),
    ),
    "matmul_constant_on_the_left": (
        lambda: _model(
            [_node("Flatten", [IN], ["f"]), _node("MatMul", ["W", "f"])], {"W": np.ones((4, 3), np.float32)}
        ),
        ("constant first operand", "matmul_features"),
    ),
    "reshape_literal_batch_stand_in": (
        lambda: _model([_node("Reshape", [IN, "t"])], {"t": np.array([7919, -1], np.int64)}),
        ("batch dimension first", "reshape_features"),
    ),
    "reshape_arithmetic_on_the_batch_size": (
        lambda: _model(
            [
                _node("Shape", [IN], ["s"]),
                _node("Gather", ["s", "zero"], ["b"]),
                _node("Mul", ["b", "one"], ["b1"]),
                _node("Unsqueeze", ["b1", "axes"], ["b2"]),
                _node("Concat", ["b2", "rest"], ["t"], axis=0),
                _node("Reshape", [IN, "t"]),
            ],
            {
                "zero": np.array(0, np.int64),
                "one": np.array(1, np.int64),
                "axes": np.array([0], np.int64),
                "rest": np.array([-1], np.int64),
            },
        ),
        ("depends on the batch size", "mul_b1"),
    ),
    "opset_newer_than_audited": (lambda: _model([_node("Flatten", [IN])], opset=22), ("opset 22",)),
    "integer_input": (lambda: _model([_node("Flatten", [IN])], in_type=TensorProto.INT64), ("float32",)),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(case):
    build, words = REFUSED[case]
    _rejects(build(), *words)


# refused before this change too: kept as guards of the broadcasting and domain rules
STILL_REFUSED: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[str, ...]]] = {
    "mul_broadcasts_the_image_tensor": (
        lambda: _model(
            [_node("Mul", [IN, "c"], ["m"]), _node("Flatten", ["m"])],
            {"c": np.ones((3, 1, 1), np.float32)},
            in_shape=(1, 5, 5),
        ),
        ("does not broadcast", "mul_m"),
    ),
    "add_constant_varies_along_batch": (
        lambda: _model(
            [_node("Add", ["c", IN], ["a"]), _node("Flatten", ["a"])],
            {"c": np.ones((3, 2, 5, 5), np.float32)},
        ),
        ("batch", "add_a"),
    ),
    "non_default_domain": (
        lambda: _model([helper.make_node("Flatten", [IN], [OUT], name="custom", domain="com.example")]),
        ("unsupported op", "custom"),
    ),
}


@pytest.mark.parametrize("case", sorted(STILL_REFUSED))
def test_still_refused(case):
    build, words = STILL_REFUSED[case]
    _rejects(build(), *words)


# ---- differential: every supported op against ONNX Runtime -------------------------------------------------


def _conv_case(rng, in_shape=(2, 7, 6), k=(3, 3), bias=True, **attrs):
    inits = {"W": _f32(rng, 3, in_shape[0], *k)}
    ins = [IN, "W"]
    if bias:
        inits["b"] = _f32(rng, 3)
        ins.append("b")
    return (
        [_node("Conv", ins, ["c"], **attrs), _node("Relu", ["c"], ["r"]), _node("Flatten", ["r"])],
        inits,
        in_shape,
    )


def _pool_case(rng, in_shape=(2, 7, 6), opset=19, **attrs):
    return [_node("AveragePool", [IN], ["p"], **attrs), _node("Flatten", ["p"])], {}, in_shape, opset


def _bn_case(rng, after_flatten=False):
    c = 50 if after_flatten else 2
    stats = {
        "s": _f32(rng, c, lo=0.5, hi=1.5),
        "b": _f32(rng, c),
        "m": _f32(rng, c),
        "v": _f32(rng, c, lo=0.5, hi=2.0),
    }
    bn = _node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"], epsilon=1e-3, momentum=0.9)
    if after_flatten:
        return [_node("Flatten", [IN], ["h"]), bn, _node("Identity", ["y"])], stats, (2, 5, 5), 15
    conv = _node("Conv", [IN, "W"], ["h"], pads=[1, 1, 1, 1])
    return [conv, bn, _node("Flatten", ["y"])], {**stats, "W": _f32(rng, 2, 2, 3, 3)}, (2, 5, 5), 15


def _gemm_case(rng, trans_b=0, c_shape=(4,), **attrs):
    w = _f32(rng, *((4, 50) if trans_b else (50, 4)))
    inits = {"W": w}
    ins = ["f", "W"]
    if c_shape is not None:
        inits["C"] = _f32(rng, *c_shape)
        ins.append("C")
    return [_node("Flatten", [IN], ["f"]), _node("Gemm", ins, transB=trans_b, **attrs)], inits


def _binary_case(rng, op, c_shape, const_left):
    c = _f32(rng, *c_shape, lo=0.5, hi=2.0) * np.where(rng.random(c_shape) < 0.5, -1, 1).astype(np.float32)
    ins = ["c", IN] if const_left else [IN, "c"]
    return [_node(op, ins, ["y"]), _node("Flatten", ["y"])], {"c": c}


def _shape_reshape_case(rng, opset=17, use_slice=False):
    """Shape -> Gather/Slice -> Cast -> Unsqueeze -> Concat -> Reshape: x.view(B, 10, -1)."""
    if use_slice:
        head = [
            _node("Shape", [IN], ["s"]),
            _node("Slice", ["s", "st", "en"], ["b2"]),
        ]
        inits = {"st": np.array([0], np.int64), "en": np.array([1], np.int64)}
    else:
        head = [
            _node("Shape", [IN], ["s"]),
            _node("Gather", ["s", "zero"], ["b"]),
            _node("Cast", ["b"], ["bc"], to=TensorProto.INT64),
            _node("Unsqueeze", ["bc", "axes"], ["b2"]),
        ]
        inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64)}
    inits["rest"] = np.array([10, -1], np.int64)
    nodes = [
        *head,
        _node("Concat", ["b2", "rest"], ["t"], axis=0),
        _node("Reshape", [IN, "t"], ["r"]),
        _node("Relu", ["r"], ["rr"]),
        _node("Flatten", ["rr"]),
    ]
    return nodes, inits, (2, 5, 5), opset


def _folded_scale_case(rng, const_nodes, opset=17):
    """x * k for a constant k computed by ``const_nodes`` (ending in tensor "k")."""
    return [*const_nodes, _node("Mul", [IN, "k"], ["y"]), _node("Flatten", ["y"])], {}, (2, 5, 5), opset


CASES: dict[str, Callable[[np.random.Generator], tuple]] = {
    "conv_pads_strides": lambda r: _conv_case(r, strides=[2, 1], pads=[1, 0, 2, 1]),
    "conv_explicit_defaults": lambda r: _conv_case(
        r, kernel_shape=[3, 3], dilations=[1, 1], group=1, strides=[1, 1], auto_pad="NOTSET"
    ),
    "conv_no_bias": lambda r: _conv_case(r, bias=False, pads=[0, 1, 0, 1]),
    "conv_valid": lambda r: _conv_case(r, auto_pad="VALID", strides=[2, 2]),
    "conv_same_upper_k4_s2": lambda r: _conv_case(r, k=(4, 4), auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower_k4_s2": lambda r: _conv_case(r, k=(4, 4), auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_same_lower_k2_s1": lambda r: _conv_case(r, k=(2, 2), auto_pad="SAME_LOWER"),
    "conv_same_upper_k3_s3": lambda r: _conv_case(r, auto_pad="SAME_UPPER", strides=[3, 3]),
    "avgpool_plain": lambda r: _pool_case(r, kernel_shape=[2, 2], strides=[2, 2]),
    "avgpool_pads_include": lambda r: _pool_case(
        r, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_pads_exclude": lambda r: _pool_case(
        r, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0
    ),
    "avgpool_asymmetric_pads_exclude": lambda r: _pool_case(r, kernel_shape=[2, 3], pads=[0, 2, 1, 0]),
    "avgpool_ceil_mode_same_size": lambda r: _pool_case(
        r, in_shape=(2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
    ),
    "avgpool_valid_dilations_1": lambda r: _pool_case(
        r, kernel_shape=[2, 2], strides=[2, 1], auto_pad="VALID", dilations=[1, 1]
    ),
    "avgpool_opset_11": lambda r: _pool_case(r, opset=11, kernel_shape=[3, 2], pads=[1, 0, 1, 1]),
    "global_avgpool": lambda r: ([_node("GlobalAveragePool", [IN], ["g"]), _node("Flatten", ["g"])], {}),
    "batchnorm_after_conv": lambda r: _bn_case(r),
    "batchnorm_flat": lambda r: _bn_case(r, after_flatten=True),
    "gemm_transB_alpha_beta": lambda r: _gemm_case(r, trans_b=1, alpha=0.7, beta=-1.3),
    "gemm_C_row": lambda r: _gemm_case(r, c_shape=(1, 4)),
    "gemm_C_scalar": lambda r: _gemm_case(r, c_shape=(), beta=2.0),
    "gemm_no_C": lambda r: _gemm_case(r, c_shape=None, alpha=-0.5),
    "matmul": lambda r: ([_node("Flatten", [IN], ["f"]), _node("MatMul", ["f", "W"])], {"W": _f32(r, 50, 6)}),
    "reshape_0_-1": lambda r: ([_node("Reshape", [IN, "t"])], {"t": np.array([0, 5, -1], np.int64)}),
    "reshape_head_-1": lambda r: ([_node("Reshape", [IN, "t"])], {"t": np.array([-1, 10, 5], np.int64)}),
    "reshape_copy_dims_allowzero_0": lambda r: (
        [_node("Reshape", [IN, "t"], allowzero=0)],
        {"t": np.array([0, 0, 25], np.int64)},
        (2, 5, 5),
        14,
    ),
    "reshape_allowzero_1": lambda r: (
        [_node("Reshape", [IN, "t"], allowzero=1)],
        {"t": np.array([-1, 50], np.int64)},
        (2, 5, 5),
        14,
    ),
    "reshape_from_shape_gather": lambda r: _shape_reshape_case(r),
    "reshape_from_shape_slice": lambda r: _shape_reshape_case(r, use_slice=True),
    "reshape_from_shape_start_end": lambda r: (
        [
            _node("Shape", [IN], ["b"], start=0, end=1),
            _node("Concat", ["b", "rest"], ["t"], axis=0),
            _node("Reshape", [IN, "t"]),
        ],
        {"rest": np.array([-1], np.int64)},
        (2, 5, 5),
        15,
    ),
    "flatten_axis_1": lambda r: ([_node("Flatten", [IN], axis=1)], {}),
    "flatten_axis_-3": lambda r: ([_node("Flatten", [IN], axis=-3)], {}),
    "identity": lambda r: ([_node("Identity", [IN], ["i"]), _node("Flatten", ["i"])], {}),
    "dropout_opset_10_ratio": lambda r: (
        [_node("Dropout", [IN], ["d", "mask"], ratio=0.4), _node("Flatten", ["d"])],
        {},
        (2, 5, 5),
        10,
    ),
    "dropout_training_false": lambda r: (
        [_node("Dropout", [IN, "ratio", "train"], ["d"], seed=3), _node("Flatten", ["d"])],
        {"ratio": np.array(0.5, np.float32), "train": np.array(False)},
        (2, 5, 5),
        13,
    ),
    "dropout_empty_training_mode": lambda r: (
        [_node("Dropout", [IN, "", ""], ["d"]), _node("Flatten", ["d"])],
        {},
        (2, 5, 5),
        13,
    ),
    "relu": lambda r: ([_node("Relu", [IN], ["y"]), _node("Flatten", ["y"])], {}),
    "add_two_dynamic": lambda r: (
        [_node("Relu", [IN], ["a"]), _node("Add", ["a", IN], ["s"]), _node("Flatten", ["s"])],
        {},
    ),
    "fold_cast_chain": lambda r: _folded_scale_case(
        r,
        [
            _const("c", 0.3),
            _node("Cast", ["c"], ["cb"], to=TensorProto.BOOL),
            _node("Cast", ["cb"], ["k"], to=TensorProto.FLOAT),
        ],
    ),
    "fold_cast_float_to_int_truncates": lambda r: _folded_scale_case(
        r,
        [
            _const("c", [-2.7, 2.7], np.float32),
            _node("Cast", ["c"], ["ci"], to=TensorProto.INT32),
            _node("Cast", ["ci"], ["k0"], to=TensorProto.FLOAT),
            _const("ax", [1, 2], np.int64),
            _node("Unsqueeze", ["k0", "ax"], ["k"]),
        ],
        opset=13,
    ),
    "fold_cast_float16_and_int_wrap": lambda r: _folded_scale_case(
        r,
        [
            _const("c", 0.1),
            _node("Cast", ["c"], ["h"], to=TensorProto.FLOAT16),
            _node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
            _const("i", 300, np.int64),
            _node("Cast", ["i"], ["i8"], to=TensorProto.INT8),  # 300 -> 44 (low bits)
            _node("Cast", ["i8"], ["i32"], to=TensorProto.FLOAT),
            _node("Mul", ["h32", "i32"], ["k"]),
        ],
    ),
    "fold_integer_div_truncates": lambda r: _folded_scale_case(
        r,
        [
            _const("a", [-7, 7], np.int64),
            _const("b", [2, -2], np.int64),
            _node("Div", ["a", "b"], ["q"]),
            _node("Cast", ["q"], ["q32"], to=TensorProto.FLOAT),
            _const("ax", [1, 2], np.int64),
            _node("Unsqueeze", ["q32", "ax"], ["k"]),
        ],
        opset=13,
    ),
    "fold_float_arithmetic": lambda r: _folded_scale_case(
        r,
        [
            helper.make_node("Constant", [], ["a"], name="ca", value_float=1.0),
            helper.make_node("Constant", [], ["b"], name="cb", value_floats=[3.0, 7.0]),
            _node("Div", ["a", "b"], ["q"]),
            _node("Sub", ["q", "a"], ["s"]),
            _node("Add", ["s", "q"], ["t"]),
            _const("ax", [1, 2], np.int64),
            _node("Unsqueeze", ["t", "ax"], ["k"]),
        ],
        opset=13,
    ),
    "fold_unsqueeze_attribute_opset_11": lambda r: _folded_scale_case(
        r, [_const("c", [0.5, -2.0]), _node("Unsqueeze", ["c"], ["k"], axes=[-1, 1])], opset=11
    ),
    "fold_squeeze": lambda r: _folded_scale_case(
        r,
        [
            _const("c", [[[[0.5]], [[-2.0]]]]),
            _const("ax", [0], np.int64),
            _node("Squeeze", ["c", "ax"], ["k"]),
        ],
        opset=13,
    ),
    "fold_slice_negative_step": lambda r: _folded_scale_case(
        r,
        [
            _const("c", np.arange(1, 11)),
            _const("st", [-1], np.int64),
            _const("en", [-100], np.int64),
            _const("ax", [0], np.int64),
            _const("sp", [-2], np.int64),
            _node("Slice", ["c", "st", "en", "ax", "sp"], ["k"]),
        ],
    ),
    "fold_slice_attributes_opset_9": lambda r: _folded_scale_case(
        r, [_const("c", np.arange(1, 11)), _node("Slice", ["c"], ["k"], starts=[2], ends=[7])], opset=9
    ),
    "fold_gather_concat": lambda r: _folded_scale_case(
        r,
        [
            _const("c", np.arange(15).reshape(3, 5) / 7.0),
            _const("i", -1, np.int64),
            _node("Gather", ["c", "i"], ["g"]),  # [5]
            _const("j", [0, 2], np.int64),
            _node("Gather", ["c", "j"], ["g2"], axis=0),  # [2, 5]
            _const("z", [0], np.int64),
            _node("Unsqueeze", ["g", "z"], ["g1"]),
            _node("Concat", ["g1", "g2"], ["k3"], axis=0),  # [3, 5]
            _const("s0", [1], np.int64),
            _const("s1", [3], np.int64),
            _const("o", [1], np.int64),
            _node("Slice", ["k3", "s0", "s1"], ["k2"]),  # [2, 5]: rows 1, 2
            _node("Unsqueeze", ["k2", "o"], ["k"]),  # [2, 1, 5]
        ],
        opset=13,
    ),
    "fold_shape_of_constant": lambda r: _folded_scale_case(
        r,
        [
            _const("c", np.zeros((2, 3))),
            _node("Shape", ["c"], ["s"]),
            _node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
            _node("Dropout", ["sf"], ["sd"]),
            _node("Identity", ["sd"], ["s1"]),
            _const("ax", [1, 2], np.int64),
            _node("Unsqueeze", ["s1", "ax"], ["k"]),
        ],
        opset=13,
    ),
}
for _op in ("Add", "Sub", "Mul", "Div"):
    for _shape in [(2, 1, 1), (1, 2, 1, 1), (5,), (), (2, 5, 5)]:
        for _left in (False, True) if _op != "Div" else (False,):
            CASES[f"{_op.lower()}_{'const_left' if _left else 'const_right'}_{_shape}"] = (
                lambda r, op=_op, shape=_shape, left=_left: _binary_case(r, op, shape, left)
            )


@pytest.mark.parametrize("fold", [True, False], ids=["fold", "unfolded"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_onnxruntime(case, fold):
    built = CASES[case](np.random.default_rng(sorted(CASES).index(case)))
    nodes, inits = built[0], built[1]
    in_shape = built[2] if len(built) > 2 else (2, 5, 5)
    opset = built[3] if len(built) > 3 else 17
    _check_matches_ort(_model(nodes, inits, in_shape, opset), in_shape, fold)


def test_folded_constants_keep_their_onnx_dtype():
    """Constant arithmetic runs in the tensor's dtype, as ONNX Runtime runs it: float32 stays float32."""
    model = _model(
        [
            helper.make_node("Constant", [], ["a"], name="ca", value_float=1.0),
            helper.make_node("Constant", [], ["b"], name="cb", value_float=3.0),
            _node("Div", ["a", "b"], ["k"]),
            _node("Mul", [IN, "k"], ["y"]),
            _node("Flatten", ["y"]),
        ]
    )
    g = build_bound_graph(model, fold=False)
    scale = [n.lmap.scale for n in g.nodes if n.kind == "affine" and hasattr(n.lmap, "scale")]
    assert float(scale[0].flatten()[0]) == float(np.float32(1.0) / np.float32(3.0)) != 1.0 / 3.0
