"""services/perturb/validation.py: each invalid field raises InvalidArgument naming it; defaults for zeros."""

from __future__ import annotations

import numpy as np
import pytest
from service_helpers import images

from reaas.methods import METHOD_NAMES, NORM_NAMES, PERTURB_METHODS
from reaas.tensors import to_proto
from reaas.v1 import common_pb2, perturb_pb2
from services.common.status import InvalidArgument
from services.perturb import validation

SHAPE = (1, 28, 28)


def _field(call) -> str:
    with pytest.raises(InvalidArgument) as info:
        call()
    return info.value.field


def test_images_are_decoded_float32_in_the_unit_box():
    x = images(3, seed=2)
    np.testing.assert_array_equal(validation.images(to_proto(x), input_shape=SHAPE, max_batch_size=4), x)
    pixels = np.full((1, *SHAPE), 255, dtype=np.uint8)
    assert validation.images(to_proto(pixels), input_shape=SHAPE, max_batch_size=4).max() == 1.0


@pytest.mark.parametrize(
    "tensor",
    [
        to_proto(images(2) + 2),  # out of [0, 1]
        to_proto(np.full((1, *SHAPE), np.nan, dtype=np.float32)),
        to_proto(images(5)),  # over max_batch_size
        to_proto(np.zeros((1, 1, 14, 14), dtype=np.float32)),  # wrong shape
        to_proto(np.zeros((1, 784), dtype=np.float32)),  # wrong rank
        common_pb2.Tensor(shape=[0, *SHAPE], dtype=common_pb2.FLOAT32),  # empty batch
        common_pb2.Tensor(shape=[1, *SHAPE], dtype=common_pb2.FLOAT32, data=b"\0" * 7),  # short data
        common_pb2.Tensor(shape=[1, *SHAPE], dtype=99),  # unknown dtype
    ],
)
def test_bad_images_name_the_images_field(tensor):
    assert _field(lambda: validation.images(tensor, input_shape=SHAPE, max_batch_size=4)) == "images"


def test_feature_radii():
    np.testing.assert_array_equal(validation.feature_radii([0.0, 1.5], 2), [0.0, 1.5])
    for values in ([0.1], [0.1, 0.2, 0.3], [0.1, -1e-9], [0.1, float("nan")], [float("inf"), 0.1]):
        assert _field(lambda v=values: validation.feature_radii(v, 2)) == "feature_radius"


def test_norm_and_method_follow_the_method_table():
    assert {validation.norm(v) for v in NORM_NAMES} == set(NORM_NAMES.values())
    assert {validation.method(v) for v in METHOD_NAMES} == set(PERTURB_METHODS)
    for bad in (-1, 3, 7):
        assert _field(lambda b=bad: validation.norm(b)) == "norm"
    for bad in (-1, max(METHOD_NAMES) + 1):
        assert _field(lambda b=bad: validation.method(b)) == "method"


def test_semantic_fields():
    assert validation.semantic_perturbation(perturb_pb2.BRIGHTNESS_CONTRAST) == "brightness_contrast"
    assert _field(lambda: validation.semantic_perturbation(7)) == "perturbation"
    assert validation.semantic_method(common_pb2.CROWN) == "crown"
    assert _field(lambda: validation.semantic_method(common_pb2.LOCAL_LIPSCHITZ)) == "method"
    assert _field(lambda: validation.semantic_method(42)) == "method"
    assert validation.contrast_per_brightness(0.0) == 1.0 and validation.contrast_per_brightness(2.5) == 2.5
    for bad in (-1.0, 1e-7, 1e7, float("nan"), float("inf")):
        assert _field(lambda b=bad: validation.contrast_per_brightness(b)) == "contrast_per_brightness"


def test_relative_tolerance():
    assert validation.relative_tolerance(0.0) == validation.DEFAULT_RELATIVE_TOLERANCE
    assert validation.relative_tolerance(1e-6) == 1e-6 and validation.relative_tolerance(0.5) == 0.5
    for bad in (0.6, 1e-7, -0.1, float("nan"), float("inf")):
        assert _field(lambda b=bad: validation.relative_tolerance(b)) == "relative_tolerance"


def test_radius_ladder():
    default = validation.radius_ladder(0, 0.0, 0.0)
    assert len(default) == 64 and default[0] == pytest.approx(1e-3) and default[-1] == pytest.approx(4.0)
    np.testing.assert_allclose(validation.radius_ladder(3, 0.1, 0.4), [0.1, 0.2, 0.4])
    cases = {
        (1, 0.0, 0.0): "num_radii",
        (2000, 0.0, 0.0): "num_radii",
        (-3, 0.0, 0.0): "num_radii",
        (4, -1.0, 0.0): "min_radius",
        (4, float("nan"), 1.0): "min_radius",
        (4, 0.0, float("inf")): "max_radius",
        (4, 2.0, 1.0): "max_radius",
        (4, 0.5, 0.5): "max_radius",
    }
    for args, name in cases.items():
        assert _field(lambda a=args: validation.radius_ladder(*a)) == name, args
