"""Conversion between numpy arrays and the wire ``reaas.v1.Tensor`` (raw little-endian bytes).

Decoding validates everything a caller can get wrong and raises :class:`TensorError` naming the field,
so servers can map it to INVALID_ARGUMENT without guessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reaas.v1 import common_pb2

_WIRE_DTYPES: dict[int, np.dtype] = {
    common_pb2.FLOAT32: np.dtype("<f4"),
    common_pb2.FLOAT64: np.dtype("<f8"),
    common_pb2.UINT8: np.dtype("u1"),
}
_NUMPY_TO_WIRE = {np.dtype(np.float32): common_pb2.FLOAT32, np.dtype(np.float64): common_pb2.FLOAT64,
                  np.dtype(np.uint8): common_pb2.UINT8}

MAX_RANK = 8


class TensorError(ValueError):
    """A wire tensor that is malformed or violates its field's contract; ``field`` names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def to_proto(array: np.ndarray) -> common_pb2.Tensor:
    """Encode a float32/float64/uint8 array as a wire Tensor (C order, little-endian)."""
    array = np.asarray(array)
    if array.dtype not in _NUMPY_TO_WIRE:
        array = array.astype(np.float32)
    wire_dtype = _NUMPY_TO_WIRE[array.dtype]
    data = np.ascontiguousarray(array, dtype=_WIRE_DTYPES[wire_dtype]).tobytes()
    return common_pb2.Tensor(shape=list(array.shape), dtype=wire_dtype, data=data)


def from_proto(tensor: common_pb2.Tensor, *, field: str, rank: int | None = None) -> np.ndarray:
    """Decode a wire Tensor to a read-only numpy array of its own dtype; raise TensorError on any mismatch."""
    if tensor.dtype not in _WIRE_DTYPES:
        raise TensorError(field, f"unsupported dtype {tensor.dtype}; use FLOAT32, FLOAT64 or UINT8")
    shape = tuple(int(s) for s in tensor.shape)
    if not shape:
        raise TensorError(field, "shape is empty; expected at least one dimension")
    if len(shape) > MAX_RANK:
        raise TensorError(field, f"rank {len(shape)} exceeds the maximum {MAX_RANK}")
    if rank is not None and len(shape) != rank:
        raise TensorError(field, f"expected rank {rank}, got shape {list(shape)}")
    if any(s < 1 for s in shape):
        raise TensorError(field, f"every dimension must be >= 1, got shape {list(shape)}")
    dtype = _WIRE_DTYPES[tensor.dtype]
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if expected != len(tensor.data):
        raise TensorError(field, f"data has {len(tensor.data)} bytes but shape {list(shape)} of "
                                 f"{dtype.name} needs {expected}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def decode_images(tensor: common_pb2.Tensor, *, field: str, input_shape: Sequence[int],
                  max_batch_size: int) -> np.ndarray:
    """Decode and validate a batch of images: [B, *input_shape], finite, in [0, 1]; returns float32 [B,C,H,W].

    UINT8 images are scaled by 1/255.
    """
    array = from_proto(tensor, field=field, rank=1 + len(input_shape))
    if tuple(array.shape[1:]) != tuple(input_shape):
        raise TensorError(field, f"expected shape [B, {', '.join(map(str, input_shape))}], "
                                 f"got {list(array.shape)}")
    if array.shape[0] > max_batch_size:
        raise TensorError(field, f"batch of {array.shape[0]} exceeds max_batch_size {max_batch_size}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if not np.all(np.isfinite(array)):
        raise TensorError(field, "contains NaN or Inf")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise TensorError(field, f"pixel values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]")
    return array.astype(np.float32)
