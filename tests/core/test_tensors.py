"""The wire codec round-trips every dtype and rejects every malformed tensor with the field's name."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reaas import tensors
from reaas.tensors import TensorError
from reaas.v1 import common_pb2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_round_trip_preserves_values_and_dtype(dtype):
    array = (np.random.default_rng(0).random((2, 3, 4)) * 200).astype(dtype)
    decoded = tensors.from_proto(tensors.to_proto(array), field="x")
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_wire_bytes_are_little_endian():
    proto = tensors.to_proto(np.array([1.0], dtype=">f4"))
    assert proto.data == np.array([1.0], dtype="<f4").tobytes()


@pytest.mark.parametrize("proto, message", [
    (common_pb2.Tensor(shape=[2], dtype=common_pb2.FLOAT32, data=b"\0" * 4), "needs 8"),
    (common_pb2.Tensor(shape=[], dtype=common_pb2.FLOAT32, data=b""), "shape is empty"),
    (common_pb2.Tensor(shape=[0], dtype=common_pb2.FLOAT32, data=b""), ">= 1"),
    (common_pb2.Tensor(shape=[-1], dtype=common_pb2.FLOAT32, data=b""), ">= 1"),
    (common_pb2.Tensor(shape=[1], dtype=common_pb2.DTYPE_UNSPECIFIED, data=b"\0"), "unsupported dtype"),
    (common_pb2.Tensor(shape=[1], dtype=99, data=b"\0"), "unsupported dtype"),
])
def test_malformed_tensors_raise_with_field_name(proto, message):
    with pytest.raises(TensorError, match=message) as error:
        tensors.from_proto(proto, field="images")
    assert error.value.field == "images" and str(error.value).startswith("images:")


def _images(values, shape=(2, 1, 2, 2)):
    return tensors.to_proto(np.full(shape, values, dtype=np.float32))


@pytest.mark.parametrize("proto, message", [
    (_images(np.nan), "NaN"),
    (_images(np.inf), "NaN or Inf"),
    (_images(1.5), r"\[0, 1\]"),
    (_images(-0.1), r"\[0, 1\]"),
    (_images(0.5, shape=(2, 1, 3, 3)), "expected shape"),
    (_images(0.5, shape=(2, 4)), "expected rank"),
    (_images(0.5, shape=(9, 1, 2, 2)), "max_batch_size"),
])
def test_decode_images_validates_content(proto, message):
    with pytest.raises(TensorError, match=message):
        tensors.decode_images(proto, field="images", input_shape=(1, 2, 2), max_batch_size=8)


def test_decode_images_scales_uint8():
    proto = tensors.to_proto(np.full((1, 1, 2, 2), 255, dtype=np.uint8))
    decoded = tensors.decode_images(proto, field="images", input_shape=(1, 2, 2), max_batch_size=1)
    assert decoded.dtype == np.float32 and np.all(decoded == 1.0)


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(-3, 5), max_size=10), dtype=st.integers(-1, 5), data=st.binary(max_size=80))
def test_arbitrary_tensors_decode_or_raise_tensor_error(shape, dtype, data):
    proto = common_pb2.Tensor(shape=shape, dtype=dtype, data=data)
    try:
        array = tensors.from_proto(proto, field="t")
    except TensorError:
        return
    assert array.nbytes == len(data) and list(array.shape) == shape
