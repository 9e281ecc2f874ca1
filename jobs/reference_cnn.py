"""The bench's reference row: a small CNN trained end to end on noisy images, smoothed in image space.

The client owns the whole model here (white-box, no service, no queries): the ceiling a client could reach
if it had the encoder's weights. Training uses Gaussian noise augmentation at the smoothing sigma (Cohen et
al. 2019); certification is the same CERTIFY as SEaaS-SC (``edge_client.smoothing.certify``) with the CNN as
base classifier, so the two rows differ only in who holds the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_client.smoothing import SmoothingConfig, certify, input_rng


@dataclass(frozen=True)
class ReferenceConfig:
    """Shape and training schedule of the reference CNN."""

    sigma: float = 0.25  # training noise std = smoothing sigma, pixel units
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0


def build_cnn(config: ReferenceConfig, num_classes: int = 10,
              input_shape: tuple[int, int, int] = (1, 28, 28)):
    """Conv-ReLU-pool x2, then an MLP head: images [B, C, H, W] in [0, 1] -> logits [B, num_classes]."""
    from torch import nn

    c1, c2 = config.channels
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), config.hidden), nn.ReLU(),
        nn.Linear(config.hidden, num_classes))


def train_reference(images: np.ndarray, labels: np.ndarray, config: ReferenceConfig = ReferenceConfig(),
                    progress: Callable[[int, float], None] | None = None):
    """Train the CNN on images [N, C, H, W] with N(0, sigma^2) noise (Adam, cross-entropy); eval mode."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = torch.tensor(np.asarray(images, dtype=np.float32))  # a copy: callers may pass read-only arrays
    targets = torch.tensor(np.asarray(labels, dtype=np.int64))
    model = build_cnn(config, int(targets.max()) + 1, tuple(data.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for start in range(0, len(data), config.batch_size):
            batch = order[start:start + config.batch_size]
            noisy = data[batch] + config.sigma * torch.randn(data[batch].shape, generator=gen)
            loss = F.cross_entropy(model(noisy), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        if progress is not None:
            progress(epoch, total / len(data))
    return model.eval()


def torch_classifier(model) -> Callable[[np.ndarray], np.ndarray]:
    """Base classifier for smoothing: noisy images [b, C, H, W] -> classes [b] (clipped to [0, 1] first)."""
    import torch

    def classify(noisy: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            batch = torch.as_tensor(np.clip(noisy, 0.0, 1.0).astype(np.float32))
            return model(batch).argmax(dim=1).numpy()
    return classify


def certify_reference(model, indices: np.ndarray, images: np.ndarray, labels: np.ndarray,
                      smoothing: SmoothingConfig, seed: int,
                      on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """CERTIFY each test image [C, H, W] in image space; rows shaped like the edge client's journal rows."""
    classify = torch_classifier(model)
    clean = classify(np.asarray(images, dtype=np.float32))
    num_classes = int(model[-1].out_features)
    rows = []
    for k, index in enumerate(indices):
        started = time.perf_counter()
        prediction, radius = certify(classify, np.asarray(images[k], np.float32), num_classes, smoothing,
                                     input_rng(seed, int(index)))
        seconds = time.perf_counter() - started
        rows.append({"index": int(index), "label": int(labels[k]), "prediction": int(prediction),
                     "clean_prediction": int(clean[k]), "radius": float(radius), "queries": 0, "bytes": 0,
                     "client_seconds": seconds, "service_seconds": 0.0, "seconds": seconds})
        if on_row is not None:
            on_row(rows[-1])
    return rows
