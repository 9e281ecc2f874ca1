"""Training data for the trainer: the project's shared loaders, as torch tensors."""

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


def load_images(
    dataset: str = "fashion-mnist", split: str = "train", root: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, C, H, W] float32 in [0, 1], labels [N] int64) of any supported dataset, as torch."""
    images, labels = datasets.load_dataset(dataset, split, root)
    return torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)


def input_statistics(dataset: str, images: torch.Tensor) -> tuple[float, float]:
    """Scalar (mean, std) of the encoder's input normalization: Fashion-MNIST's fixed constants (so that
    ``make pretrain`` reproduces the shipped encoders), else measured on the training images."""
    from services.trainer.encoders import FMNIST_MEAN, FMNIST_STD

    if dataset == "fashion-mnist":
        return FMNIST_MEAN, FMNIST_STD
    sample = images[:: max(1, len(images) // 10_000)]
    return float(sample.mean()), max(float(sample.std()), 1e-3)


def train_val_split(n: int, val_size: int) -> tuple[slice, slice]:
    """Carve the last ``val_size`` training images off as a validation split: (train, val) slices."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    return slice(0, n - val_size), slice(n - val_size, n)
