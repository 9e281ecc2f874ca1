"""Baselines against a plain encoder service (SEaaS): image-space smoothing and denoised smoothing.

SEaaS-SC: noise in image space, every noisy copy is one Encode query — ``k`` noisy copies per training
input, ``n0 + n`` per test input — and the radius is ``sigma * Phi^-1(p_A)`` directly in pixel units.
Noisy copies are clipped to [0, 1] before they are sent (the service only accepts valid pixels); clipping
is a fixed post-processing of the noisy input, part of the base classifier, so the certificate holds.

SEaaS-DS (Salman et al. 2020): a small DnCNN denoiser ``D`` (conv-BN-ReLU stack, residual) the client
trains on its own images with MSE ``||D(x + eps) - x||^2``, optionally followed by the stability loss
``CE(F(D(x + eps)), F(x))`` through a differentiable *surrogate* classifier ``F`` (the client has no
gradients of the served encoder). Training needs torch; the denoiser is exported to ONNX and run with
onnxruntime at certification time, so certification stays torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_client.mlp import MLP
from edge_client.smoothing import SmoothingConfig, certify, fill_standard_normal


def noisy_copies(images: np.ndarray, sigma: float, copies: int, rng: np.random.Generator) -> np.ndarray:
    """``copies`` clipped noisy versions of each image: [N * copies, C, H, W] float32, image-major order."""
    repeated = np.repeat(np.asarray(images, dtype=np.float32), copies, axis=0)
    noise = fill_standard_normal(rng, np.empty_like(repeated))
    return np.clip(repeated + np.float32(sigma) * noise, 0.0, 1.0)


# The noise of the SEaaS-SC training copies is drawn from default_rng([seed, TRAINING_NOISE_STREAM]), images
# taken TRAINING_NOISE_CHUNK at a time (the draws depend on the chunking), and nowhere else; the stream is
# part of the copies' cache variant, so a cache key names exactly one content.
TRAINING_NOISE_STREAM = 0x5EAA5
TRAINING_NOISE_CHUNK = 2048


def noisy_variant(sigma: float, copies: int, seed: int) -> str:
    """The feature-cache variant of the SEaaS-SC training copies drawn with these parameters."""
    return f"noisy-sigma{sigma:g}-k{copies}-seed{seed}-stream{TRAINING_NOISE_STREAM:x}"


def fetch_noisy_training_features(encoder, images: np.ndarray, sigma: float, copies: int,
                                  seed: int) -> np.ndarray:
    """SEaaS-SC training data: features [N * copies, D] of ``copies`` noisy copies per image, image-major
    (``copies`` queries each); the noise is seeded by ``seed`` on the training-noise stream."""
    rng = np.random.default_rng([seed, TRAINING_NOISE_STREAM])
    chunk = TRAINING_NOISE_CHUNK
    features = [encoder.encode(noisy_copies(images[start:start + chunk], sigma, copies, rng))
                for start in range(0, len(images), chunk)]
    return np.concatenate(features)


def image_classifier(encoder, mlp: MLP, denoiser: Callable[[np.ndarray], np.ndarray] | None = None
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Base classifier of noisy images [b, C, H, W]: (denoise), clip to [0, 1], Encode (b queries), MLP."""
    def classify(noisy: np.ndarray) -> np.ndarray:
        images = denoiser(noisy) if denoiser is not None else noisy
        return mlp.predict(encoder.encode(np.clip(images, 0.0, 1.0).astype(np.float32)))
    return classify


def certify_image(encoder, mlp: MLP, image: np.ndarray, config: SmoothingConfig, rng: np.random.Generator,
                  denoiser: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[int, float]:
    """SEaaS-SC / SEaaS-DS certificate of one image [C, H, W]: (class or ABSTAIN, radius in pixel units)."""
    return certify(image_classifier(encoder, mlp, denoiser), np.asarray(image, np.float32), mlp.num_classes,
                   config, rng)


@dataclass(frozen=True)
class DenoiserConfig:
    """DnCNN shape and training schedule."""

    sigma: float = 0.25  # image-space noise std, pixel units
    depth: int = 6  # conv layers
    channels: int = 32
    epochs: int = 5  # MSE epochs; with validation_fraction > 0 the upper limit of early stopping
    stability_epochs: int = 0  # then train with the stability loss (needs a surrogate classifier)
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.0  # > 0: hold out this seeded share and stop MSE at its plateau
    patience: int = 2  # epochs without a validation-MSE improvement (edge_client.early_stopping)
    min_improvement: float = 1e-3  # relative
    threads: int = 0  # torch intra-op threads; 0 = leave torch's setting
    seed: int = 0


def build_dncnn(in_channels: int, config: DenoiserConfig):
    """A DnCNN: conv-ReLU, (depth - 2) x conv-BN-ReLU, conv; predicts the noise, returns x - noise."""
    import torch
    from torch import nn

    class DnCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(in_channels, config.channels, 3, padding=1), nn.ReLU()]
            for _ in range(config.depth - 2):
                layers += [nn.Conv2d(config.channels, config.channels, 3, padding=1, bias=False),
                           nn.BatchNorm2d(config.channels), nn.ReLU()]
            layers.append(nn.Conv2d(config.channels, in_channels, 3, padding=1))
            self.body = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - self.body(x)

    return DnCNN()


def train_denoiser(images: np.ndarray, config: DenoiserConfig = DenoiserConfig(),
                   surrogate: Callable | None = None,
                   progress: Callable[[str, int, float], None] | None = None,
                   checkpoint: str | os.PathLike | None = None):
    """Train a DnCNN on images [N, C, H, W] in [0, 1] with MSE, then optionally the stability loss.

    With ``config.validation_fraction > 0`` the MSE phase runs to convergence: a seeded share of the images is
    held out (fixed noise) and training stops at its validation-MSE plateau, keeping the best epoch
    (``edge_client.early_stopping``; ``progress("validation", epoch, mse)``). ``surrogate`` is a
    differentiable torch callable images -> logits standing in for g(f(.)); it is required when
    ``config.stability_epochs > 0``. With ``checkpoint`` (a file path) the early-stopping MSE phase is
    resumable per epoch (``edge_client.early_stopping.EpochCheckpoint``; needs ``validation_fraction > 0``);
    the stability epochs after it are not checkpointed. Returns the torch module in eval mode.
    """
    import torch
    import torch.nn.functional as F

    from edge_client.early_stopping import EpochCheckpoint, early_stopping_fit, training_key
    from edge_client.training import split_train_validation

    if config.stability_epochs and surrogate is None:
        raise ValueError("the stability loss needs a differentiable surrogate classifier")
    if checkpoint is not None and not config.validation_fraction > 0:
        raise ValueError("a checkpoint covers the early-stopping phase: needs validation_fraction > 0")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = torch.tensor(np.asarray(images, dtype=np.float32))  # a copy: callers may pass read-only arrays
    model = build_dncnn(data.shape[1], config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    train_rows = torch.arange(len(data))
    if config.validation_fraction > 0:
        train_idx, val_idx = split_train_validation(len(data), config.validation_fraction, config.seed)
        train_rows, val_rows = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        val_clean = data[val_rows]
        val_noisy = val_clean + config.sigma * torch.randn(val_clean.shape, generator=gen)

    def epoch_of(phase: str, epoch: int) -> None:
        order = train_rows[torch.randperm(len(train_rows), generator=gen)]
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            clean = data[order[start:start + config.batch_size]]
            noisy = clean + config.sigma * torch.randn(clean.shape, generator=gen)
            denoised = model(noisy)
            if phase == "mse":
                loss = F.mse_loss(denoised, clean)
            else:
                with torch.no_grad():
                    target = surrogate(clean).argmax(dim=1)
                loss = F.cross_entropy(surrogate(denoised), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(clean)
            count += len(clean)
        if progress is not None:
            progress(phase, epoch, total / max(count, 1))

    if config.validation_fraction > 0:
        def validation_mse() -> float:
            with torch.inference_mode():
                total = sum(F.mse_loss(model(val_noisy[s:s + 2048]), val_clean[s:s + 2048], reduction="sum")
                            for s in range(0, len(val_rows), 2048))
                return float(total) / max(val_clean.numel(), 1)

        def report(epoch: int, mse: float) -> None:
            if progress is not None:
                progress("validation", epoch, mse)

        saving = None if checkpoint is None else EpochCheckpoint(
            checkpoint, training_key(config, images), {"optimizer": optimizer, "generator": gen})
        early_stopping_fit(model, lambda epoch: epoch_of("mse", epoch), validation_mse, config.epochs,
                           config.patience, config.min_improvement, report, saving)
    else:
        for epoch in range(config.epochs):
            model.train()
            epoch_of("mse", epoch)
    for epoch in range(config.stability_epochs):
        model.train()
        epoch_of("stability", epoch)
    return model.eval()


def export_denoiser_onnx(model, path: str | os.PathLike, input_shape: tuple[int, int, int]) -> None:
    """Write the denoiser to ONNX with a dynamic batch axis (atomic rename)."""
    from reaas.onnx_export import torch_to_onnx

    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(torch_to_onnx(model, input_shape, input_name="noisy", output_name="denoised"))
    os.replace(tmp, path)


class OnnxDenoiser:
    """The exported denoiser run with onnxruntime on CPU: noisy images [b, C, H, W] -> denoised, float32."""

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, noisy: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.asarray(noisy, dtype=np.float32)})[0]
