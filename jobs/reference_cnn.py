"""The bench's smoothed white-box reference: a small CNN trained end to end on noisy images, smoothed in image
space.

The client owns the whole model here (white-box, no service, no queries): the ceiling a client could reach
if it had the encoder's weights. Training uses Gaussian noise augmentation at the smoothing sigma (Cohen et
al. 2019) until the loss on a held-out validation split of the *training* images stops improving (early
stopping; the best epoch's weights are kept). Certification is the project's one CERTIFY
(``edge_client.smoothing.certify``) with the CNN as base classifier, so this row and SEaaS-SC differ only in
who holds the encoder. The CNN is exported to ONNX and run by onnxruntime in large batches: 2-4x faster than
eager torch for 28x28 inputs on CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_client.early_stopping import EpochCheckpoint, early_stopping_fit, training_key
from edge_client.smoothing import SmoothingConfig, certify, input_rng


@dataclass(frozen=True)
class ReferenceConfig:
    """Shape and training schedule of the reference CNN (early stopping on a validation split)."""

    sigma: float = 0.25  # training noise std = smoothing sigma, pixel units
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    max_epochs: int = 40  # upper limit; training stops earlier at the validation plateau
    patience: int = 3  # epochs without a validation-loss improvement before stopping
    min_improvement: float = 1e-3  # relative: a smaller decrease of the validation loss is a plateau
    validation_fraction: float = 0.1  # held out of the training images, seeded
    batch_size: int = 128
    learning_rate: float = 1e-3
    threads: int = 1
    seed: int = 0


def build_cnn(config: ReferenceConfig, num_classes: int = 10,
              input_shape: tuple[int, int, int] = (1, 28, 28)):
    """(Conv-ReLU-pool) x2, then an MLP head: images [B, C, H, W] in [0, 1] -> logits [B, num_classes]."""
    from torch import nn

    c1, c2 = config.channels
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),  # pool first: same values, 4x less
        nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), config.hidden), nn.ReLU(),
        nn.Linear(config.hidden, num_classes))


def train_reference(images: np.ndarray, labels: np.ndarray, config: ReferenceConfig = ReferenceConfig(),
                    progress: Callable[[int, float], None] | None = None,
                    checkpoint: str | os.PathLike | None = None):
    """Train the CNN on images [N, C, H, W] with N(0, sigma^2) noise (Adam, cross-entropy) until the noisy
    validation loss plateaus; returns (model in eval mode, TrainingReport). ``progress(epoch, val_loss)``;
    with ``checkpoint`` (a file path) resumable per epoch (``edge_client.early_stopping.EpochCheckpoint``)."""
    import torch
    import torch.nn.functional as F

    from edge_client.training import split_train_validation

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = torch.tensor(np.asarray(images, dtype=np.float32))  # a copy: callers may pass read-only arrays
    targets = torch.tensor(np.asarray(labels, dtype=np.int64))
    train_idx, val_idx = (torch.as_tensor(i) for i in split_train_validation(len(data),
                                                                              config.validation_fraction,
                                                                              config.seed))
    val_x = data[val_idx] + config.sigma * torch.randn(data[val_idx].shape, generator=gen)  # fixed noise
    val_y = targets[val_idx]
    model = build_cnn(config, int(targets.max()) + 1, tuple(data.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def step(epoch: int) -> None:
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            noisy = data[batch] + config.sigma * torch.randn(data[batch].shape, generator=gen)
            loss = F.cross_entropy(model(noisy), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def validation_loss() -> float:
        with torch.inference_mode():
            return float(sum(F.cross_entropy(model(val_x[s:s + 4096]), val_y[s:s + 4096], reduction="sum")
                             for s in range(0, len(val_y), 4096)) / max(len(val_y), 1))

    saving = None if checkpoint is None else EpochCheckpoint(
        checkpoint, training_key(config, images, labels), {"optimizer": optimizer, "generator": gen})
    report = early_stopping_fit(model, step, validation_loss, config.max_epochs, config.patience,
                                config.min_improvement, progress, saving)
    return model, report


def onnx_classifier(model, input_shape: tuple[int, int, int], threads: int = 1
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """Base classifier for smoothing: images [b, C, H, W] -> classes [b], clipped to [0, 1] first; the
    torch model is exported to ONNX and run by onnxruntime (CPU, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    from reaas.onnx_export import torch_to_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(torch_to_onnx(model, input_shape, output_name="logits"), options,
                                   providers=["CPUExecutionProvider"])

    def classify(noisy: np.ndarray) -> np.ndarray:
        batch = np.clip(np.asarray(noisy, dtype=np.float32), 0.0, 1.0)
        return session.run(None, {"images": batch})[0].argmax(axis=1)
    return classify


def certify_reference(model, indices: np.ndarray, images: np.ndarray, labels: np.ndarray,
                      smoothing: SmoothingConfig, seed: int, threads: int = 1,
                      on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """CERTIFY each test image [C, H, W] in image space; rows shaped like the edge client's journal rows
    (``clean_prediction``: the base CNN on the clean image)."""
    images = np.asarray(images, dtype=np.float32)
    classify = onnx_classifier(model, tuple(images.shape[1:]), threads)
    clean = classify(images)
    num_classes = int(model[-1].out_features)
    rows = []
    for k, index in enumerate(indices):
        started = time.perf_counter()
        prediction, radius = certify(classify, images[k], num_classes, smoothing, input_rng(seed, int(index)))
        seconds = time.perf_counter() - started
        rows.append({"index": int(index), "label": int(labels[k]), "prediction": int(prediction),
                     "clean_prediction": int(clean[k]), "radius": float(radius), "queries": 0, "bytes": 0,
                     "client_seconds": seconds, "service_seconds": 0.0, "seconds": seconds})
        if on_row is not None:
            on_row(rows[-1])
    return rows
