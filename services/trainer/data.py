"""Fashion-MNIST for the trainer: the project's shared loader, as torch tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from reaas import datasets


def load_fashion_mnist(
    split: str = "train", root: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 1, 28, 28] float32 in [0, 1], labels [N] int64) of a Fashion-MNIST split, as torch."""
    images, labels = datasets.load_fashion_mnist(split, root)
    return torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)


def train_val_split(n: int, val_size: int) -> tuple[slice, slice]:
    """Carve the last ``val_size`` training images off as a validation split: (train, val) slices."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    return slice(0, n - val_size), slice(n - val_size, n)
