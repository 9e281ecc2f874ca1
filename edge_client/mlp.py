"""The downstream classifier g: a ReLU MLP over raw encoder features, in numpy, saved as .npz.

Encoders differ in feature scale by orders of magnitude, so the input normalization is part of the
model: ``x = (z - center) * input_scale`` with ``input_scale = sqrt(d) / S``, where ``S`` is the training
features' RMS spread (RMS distance to their mean). Each normalized coordinate then has RMS about 1, and a
feature-space noise ``sigma_F = c * S / sqrt(d)`` is ``c`` per normalized coordinate.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

_FORMAT_VERSION = 1


def feature_spread(features: np.ndarray) -> float:
    """RMS distance of features [N, D] to their mean (the spread S, raw feature units)."""
    features = np.asarray(features, dtype=np.float64)
    centered = features - features.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(centered * centered, axis=1))))


@dataclass(frozen=True)
class MLP:
    """ReLU MLP g: raw features [N, D] -> logits [N, C]; weights[l] is [out, in], biases[l] is [out]."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    center: np.ndarray  # [D] raw feature units
    input_scale: float  # sqrt(D) / S, multiplies centred raw features
    spread: float  # S, raw feature units

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("weights and biases must be non-empty and of equal length")
        prev = self.center.shape[0]
        for w, b in zip(self.weights, self.biases, strict=True):
            if w.ndim != 2 or w.shape[1] != prev or b.shape != (w.shape[0],):
                raise ValueError(f"layer shapes do not chain: weight {w.shape}, bias {b.shape}, input {prev}")
            prev = w.shape[0]

    @property
    def feature_dim(self) -> int:
        """D, the length of one raw feature vector."""
        return int(self.center.shape[0])

    @property
    def num_classes(self) -> int:
        """C, the number of logits."""
        return int(self.weights[-1].shape[0])

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """Widths of the hidden layers."""
        return tuple(int(w.shape[0]) for w in self.weights[:-1])

    @property
    def sha256(self) -> str:
        """The model's identity: sha256 over every parameter and the normalization (dtype, shape, bytes).

        Journals and training reports name a downstream model by it, so equal hashes mean equal predictions.
        """
        digest = hashlib.sha256()
        for value in (*self.weights, *self.biases, self.center, self.input_scale, self.spread):
            array = np.ascontiguousarray(value if isinstance(value, np.ndarray) else np.float64(value))
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def folded_layers(self, dtype: np.dtype | type = np.float64) -> list[tuple[np.ndarray, np.ndarray]]:
        """Affine layers [(W [out, in], b [out])] on raw features, normalization folded into layer 0."""
        w0 = self.weights[0].astype(np.float64) * self.input_scale
        b0 = self.biases[0].astype(np.float64) - w0 @ self.center.astype(np.float64)
        layers = [(w0, b0)] + [(w.astype(np.float64), b.astype(np.float64))
                               for w, b in zip(self.weights[1:], self.biases[1:], strict=True)]
        return [(w.astype(dtype), b.astype(dtype)) for w, b in layers]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits [N, C] float64 of raw features [N, D]."""
        return mlp_forward(self.folded_layers(np.float64), np.asarray(features, dtype=np.float64))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class [N] int64 of raw features [N, D]."""
        return np.argmax(self.logits(features), axis=1).astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to a .npz file atomically."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(_FORMAT_VERSION),
            "num_layers": np.array(len(self.weights)),
            "center": self.center, "input_scale": np.array(self.input_scale), "spread": np.array(self.spread),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MLP:
        """Read a model written by :meth:`save`."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            version = int(data["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported MLP format version {version}")
            n = int(data["num_layers"])
            return cls(weights=tuple(data[f"w{i}"] for i in range(n)),
                       biases=tuple(data[f"b{i}"] for i in range(n)),
                       center=data["center"], input_scale=float(data["input_scale"]),
                       spread=float(data["spread"]))


def mlp_forward(layers: list[tuple[np.ndarray, np.ndarray]], inputs: np.ndarray) -> np.ndarray:
    """Forward pass of affine layers with ReLU between them: inputs [N, D] -> outputs [N, C]."""
    hidden = inputs
    for i, (w, b) in enumerate(layers):
        hidden = hidden @ w.T + b
        if i < len(layers) - 1:
            np.maximum(hidden, 0.0, out=hidden)
    return hidden


def init_mlp(feature_dim: int, hidden_widths: tuple[int, ...], num_classes: int, center: np.ndarray,
             spread: float, rng: np.random.Generator) -> MLP:
    """He-initialized MLP with the given normalization statistics."""
    if spread <= 0 or not np.isfinite(spread):
        raise ValueError(f"feature spread must be positive and finite, got {spread}")
    widths = (feature_dim, *hidden_widths, num_classes)
    weights, biases = [], []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        weights.append((rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        biases.append(np.zeros(fan_out, dtype=np.float32))
    return MLP(tuple(weights), tuple(biases), np.asarray(center, dtype=np.float32),
               float(np.sqrt(feature_dim) / spread), float(spread))
