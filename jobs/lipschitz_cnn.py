"""The bench's deterministic white-box reference: a CNN that is 1-Lipschitz (ℓ2) by construction.

Every Conv2d / Linear is an AOL layer (almost-orthogonal; Prach & Lampert 2022; ``services.trainer.aol``,
shared with the trainer's AOL encoders), of operator norm ≤ 1 by construction. ReLU and Flatten
are 1-Lipschitz, so the logits z(x) are 1-Lipschitz and every logit difference z_y - z_j is √2-Lipschitz:
the prediction cannot change within ℓ2 radius margin / (√2·L), L = 1 (proven, no sampling). No input
normalization is applied (it would multiply L by 1/std). The scaling folds into the weights, so the network
exports to ONNX as plain Conv / Gemm / Relu and the perturb service's bound engine can check L independently
(``tests/jobs/test_lipschitz_cnn.py``).

Training: end to end on labels with cross-entropy on logits with a margin offset,
CE(t·(z - u·1_y)): the offset u asks for margin u, i.e. a certified radius u / √2, before the loss is small.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_client.early_stopping import EpochCheckpoint, early_stopping_fit, training_key

PROVEN_LIPSCHITZ = 1.0  # of the logits, ℓ2 -> ℓ2, by construction (AOL layers, ReLU, Flatten)


@dataclass(frozen=True)
class LipschitzConfig:
    """Shape, loss and training schedule of the AOL CNN (early stopping on a validation split)."""

    channels: tuple[int, ...] = (16, 32, 64)  # first conv stride 1, then stride 2 each
    hidden: int = 256
    # "aol-narrow": each layer rescaled on its narrower side (the wide 3,136 -> 256 dense layer keeps norm ~1,
    # and its Gram is 256², not 3,136²); "aol": the paper's column rule everywhere
    layers: str = "aol-narrow"
    margin_offset: float = 0.5 * math.sqrt(2.0)  # u: the loss asks for certified radius u / √2 = 0.5
    temperature: float = 4.0  # t
    max_epochs: int = 40
    patience: int = 3
    min_improvement: float = 1e-3
    validation_fraction: float = 0.1
    batch_size: int = 128
    learning_rate: float = 1e-3
    threads: int = 1
    seed: int = 0


def build_aol_cnn(config: LipschitzConfig, num_classes: int = 10,
                  input_shape: tuple[int, int, int] = (1, 28, 28)):
    """AOL conv stack (3x3; stride 1, then 2, 2, …) with ReLU, Flatten, AOL dense, ReLU, AOL dense:
    images [B, C, H, W] in [0, 1] -> logits [B, num_classes], 1-Lipschitz by construction (the layers of
    ``services.trainer.aol``, zero biases)."""
    from torch import nn

    from services.trainer.aol import make_aol

    layers: list[nn.Module] = []
    c_in, (_, height, width) = input_shape[0], input_shape
    for i, c_out in enumerate(config.channels):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
        c_in = c_out
        if stride == 2:
            height, width = (height + 1) // 2, (width + 1) // 2
    layers += [nn.Flatten(), nn.Linear(c_in * height * width, config.hidden), nn.ReLU(),
               nn.Linear(config.hidden, num_classes)]
    model = nn.Sequential(*layers)
    for layer in model:
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
    return make_aol(model, config.layers)


def frozen(model):
    """A copy with the AOL scaling folded into ordinary Conv2d / Linear weights, in eval mode (same
    function; what is exported and certified)."""
    import copy

    from services.trainer.export import strip_parametrizations

    return strip_parametrizations(copy.deepcopy(model)).eval()


def offset_cross_entropy(logits, targets, config: LipschitzConfig):
    """CE(t·(z - u·1_y)): small only once the true class leads by more than the offset u."""
    import torch.nn.functional as F

    shifted = logits - config.margin_offset * F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(config.temperature * shifted, targets)


def train_lipschitz_cnn(images: np.ndarray, labels: np.ndarray, config: LipschitzConfig = LipschitzConfig(),
                        progress: Callable[[int, float], None] | None = None,
                        checkpoint: str | os.PathLike | None = None):
    """Train the AOL CNN on clean images [N, C, H, W] (Adam, offset cross-entropy) until the validation loss
    plateaus; returns (frozen model in eval mode, TrainingReport). With ``checkpoint`` (a file path)
    resumable per epoch (``edge_client.early_stopping.EpochCheckpoint``)."""
    import torch

    from edge_client.training import split_train_validation

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = torch.tensor(np.asarray(images, dtype=np.float32))
    targets = torch.tensor(np.asarray(labels, dtype=np.int64))
    train_idx, val_idx = (torch.as_tensor(i) for i in split_train_validation(len(data),
                                                                              config.validation_fraction,
                                                                              config.seed))
    model = build_aol_cnn(config, int(targets.max()) + 1, tuple(data.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def step(epoch: int) -> None:
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = offset_cross_entropy(model(data[batch]), targets[batch], config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def validation_loss() -> float:
        with torch.inference_mode():
            total = 0.0
            for start in range(0, len(val_idx), 4096):
                rows = val_idx[start:start + 4096]
                total += float(offset_cross_entropy(model(data[rows]), targets[rows], config)) * len(rows)
            return total / max(len(val_idx), 1)

    saving = None if checkpoint is None else EpochCheckpoint(
        checkpoint, training_key(config, images, labels), {"optimizer": optimizer, "generator": gen})
    report = early_stopping_fit(model, step, validation_loss, config.max_epochs, config.patience,
                                config.min_improvement, progress, saving)
    return frozen(model), report


def margin_radii(logits: np.ndarray, lipschitz: float = PROVEN_LIPSCHITZ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes [B] and certified ℓ2 radii [B] = (z_top - z_second) / (√2·L) of logits [B, K]."""
    logits = np.asarray(logits, dtype=np.float64)
    top2 = np.sort(logits, axis=1)[:, -2:]
    return logits.argmax(axis=1), (top2[:, 1] - top2[:, 0]) / (math.sqrt(2.0) * lipschitz)


def certify_lipschitz(model, indices: np.ndarray, images: np.ndarray, labels: np.ndarray,
                      on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Certify test images [N, C, H, W] by margin / (√2·L) in float64 (one forward pass each; no queries);
    rows shaped like the edge client's journal rows (clean prediction = certified prediction)."""
    import torch

    rows = []
    with torch.inference_mode():
        model64 = _float64(model)
        for k, index in enumerate(indices):
            started = time.perf_counter()
            logits = model64(torch.as_tensor(np.asarray(images[k:k + 1], dtype=np.float64))).numpy()
            predictions, radii = margin_radii(logits)
            seconds = time.perf_counter() - started
            rows.append({"index": int(index), "label": int(labels[k]), "prediction": int(predictions[0]),
                         "clean_prediction": int(predictions[0]), "radius": float(radii[0]), "queries": 0,
                         "bytes": 0, "client_seconds": seconds, "service_seconds": 0.0, "seconds": seconds})
            if on_row is not None:
                on_row(rows[-1])
    return rows


def _float64(model):
    """A float64 copy of a frozen model (certificates computed without float32 rounding of the margin)."""
    import copy

    return copy.deepcopy(model).double().eval()
