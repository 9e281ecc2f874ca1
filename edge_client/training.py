"""Training the downstream MLP on fetched features, in numpy (no torch needed), with feature-space noise.

Gaussian noise augmentation for smoothing costs no queries: ``sigma_F = c * S / sqrt(d)`` is ``c`` per
normalized coordinate (see ``mlp``). ``c`` and the other hyperparameters are chosen on a validation split
carved from the training features, never on test inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_client.mlp import MLP, feature_spread, init_mlp


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the MLP and its optimizer (Adam, cosine learning-rate decay)."""

    hidden_widths: tuple[int, ...] = (256, 256)
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW-style), per step
    noise_c: float = 1.0  # sigma_F = noise_c * S / sqrt(d); 0 trains without noise
    seed: int = 0


def noise_sigma(spread: float, feature_dim: int, noise_c: float) -> float:
    """Feature-space noise sigma_F = c * S / sqrt(d), raw feature units."""
    return float(noise_c * spread / np.sqrt(feature_dim))


def split_train_validation(num: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(num) into (train indices, validation indices)."""
    order = np.random.default_rng(seed).permutation(num)
    num_val = int(round(num * validation_fraction))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def selection_rows(num: int, selection_images: int = 12_000, validation_fraction: float = 0.1,
                   validation_size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training-set rows (train part, validation inputs) of the hyperparameter selection, as REaaS draws them.

    A seeded subset of ``selection_images`` training rows, split with :func:`split_train_validation`, the
    first ``validation_size`` validation rows scored: REaaS (``workflow.train_downstream``) chooses its c
    on these rows and the SEaaS baselines their image-space sigma.
    """
    subset = np.random.default_rng(seed).permutation(num)[:selection_images]
    train_idx, val_idx = split_train_validation(len(subset), validation_fraction, seed)
    return subset[train_idx], subset[val_idx[:validation_size]]


def train_mlp(features: np.ndarray, labels: np.ndarray, config: TrainConfig = TrainConfig(),
              num_classes: int | None = None, progress: Callable[[int, float], None] | None = None,
              checkpoint: str | os.PathLike | None = None) -> MLP:
    """Train an MLP on raw features [N, D] and labels [N]; ``progress(epoch, mean_loss)`` after each epoch.

    With ``checkpoint`` (an .npz path) the state after every epoch (weights, Adam moments, step, RNG state,
    losses) is written there atomically, and a run finding a checkpoint of the same training (config, class
    count, features and labels) resumes after its last epoch with a bit-identical result; ``progress`` is
    replayed for the restored epochs. Another training's checkpoint is ignored and overwritten. The file is
    kept after the last epoch, so a re-run returns the trained MLP without training.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(num_classes or labels.max() + 1)
    rng = np.random.default_rng(config.seed)
    center = features.mean(axis=0)
    spread = feature_spread(features)
    model = init_mlp(features.shape[1], tuple(config.hidden_widths), num_classes, center, spread, rng)
    params = [p.copy() for pair in zip(model.weights, model.biases, strict=True) for p in pair]
    inputs = ((features - center) * np.float32(model.input_scale)).astype(np.float32)
    moment1 = [np.zeros_like(p) for p in params]
    moment2 = [np.zeros_like(p) for p in params]
    steps_per_epoch = max(1, int(np.ceil(len(labels) / config.batch_size)))
    total_steps, step, history = config.epochs * steps_per_epoch, 0, []
    if checkpoint is not None:
        identity = _training_identity(features, labels, config, num_classes)
        step, history = _resume_mlp(Path(checkpoint), identity, params, moment1, moment2, rng)
        for epoch, loss in enumerate(history):
            if progress is not None:
                progress(epoch, loss)
    for epoch in range(len(history), config.epochs):
        order = rng.permutation(len(labels))
        losses = []
        for start in range(0, len(labels), config.batch_size):
            batch = order[start:start + config.batch_size]
            x = inputs[batch]
            if config.noise_c > 0:
                x = x + np.float32(config.noise_c) * rng.standard_normal(x.shape, dtype=np.float32)
            loss, grads = _loss_and_grads(params, x, labels[batch])
            losses.append(loss)
            lr = config.learning_rate * 0.5 * (1 + np.cos(np.pi * step / total_steps))
            step += 1
            for p, g, m, v in zip(params, grads, moment1, moment2, strict=True):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                m_hat = m / (1 - 0.9 ** step)
                v_hat = v / (1 - 0.999 ** step)
                if config.weight_decay and p.ndim == 2:
                    p *= np.float32(1 - lr * config.weight_decay)
                p -= (lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
        history.append(float(np.mean(losses)))
        if checkpoint is not None:
            _save_mlp_state(Path(checkpoint), identity, params, moment1, moment2, step, history, rng)
        if progress is not None:
            progress(epoch, history[-1])
    return MLP(tuple(params[0::2]), tuple(params[1::2]), model.center, model.input_scale, model.spread)


def _training_identity(features: np.ndarray, labels: np.ndarray, config: TrainConfig,
                       num_classes: int) -> str:
    """sha256 of everything a train_mlp run depends on: config, class count, features and labels."""
    digest = hashlib.sha256(repr((sorted(asdict(config).items()), num_classes, features.shape,
                                  labels.shape)).encode())
    digest.update(np.ascontiguousarray(features).data)
    digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()


def _save_mlp_state(path: Path, identity: str, params: list[np.ndarray], moment1: list[np.ndarray],
                    moment2: list[np.ndarray], step: int, history: list[float], rng: np.random.Generator
                    ) -> None:
    """The training state after an epoch, written to ``path`` atomically (tmp file, then rename)."""
    arrays = {f"{kind}{i}": a for kind, group in (("p", params), ("m", moment1), ("v", moment2))
              for i, a in enumerate(group)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.savez(handle, identity=np.array(identity), step=np.array(step, np.int64),
                 history=np.array(history, np.float64), rng=np.array(json.dumps(rng.bit_generator.state)),
                 **arrays)
    os.replace(tmp, path)


def _resume_mlp(path: Path, identity: str, params: list[np.ndarray], moment1: list[np.ndarray],
                moment2: list[np.ndarray], rng: np.random.Generator) -> tuple[int, list[float]]:
    """Load a checkpoint of this training into the arrays and ``rng`` in place; (step, loss history), or
    (0, []) when ``path`` is absent or holds another training."""
    if not path.is_file():
        return 0, []
    with np.load(path) as saved:
        if str(saved["identity"]) != identity:
            return 0, []
        for kind, group in (("p", params), ("m", moment1), ("v", moment2)):
            for i, a in enumerate(group):
                a[...] = saved[f"{kind}{i}"]
        rng.bit_generator.state = json.loads(str(saved["rng"]))
        return int(saved["step"]), [float(v) for v in saved["history"]]


def _loss_and_grads(params: list[np.ndarray], x: np.ndarray, labels: np.ndarray
                    ) -> tuple[float, list[np.ndarray]]:
    """Mean cross-entropy and its gradients for normalized inputs x [B, D]."""
    weights, biases = params[0::2], params[1::2]
    activations = [x]
    hidden = x
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        hidden = hidden @ w.T + b
        if i < len(weights) - 1:
            hidden = np.maximum(hidden, 0.0)
            activations.append(hidden)
    logits = hidden - hidden.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    batch = x.shape[0]
    loss = float(-np.mean(np.log(probs[np.arange(batch), labels] + 1e-12)))
    delta = probs
    delta[np.arange(batch), labels] -= 1.0
    delta /= batch
    grads: list[np.ndarray] = [None] * len(params)  # type: ignore[list-item]
    for i in range(len(weights) - 1, -1, -1):
        grads[2 * i] = (delta.T @ activations[i]).astype(np.float32)
        grads[2 * i + 1] = delta.sum(axis=0).astype(np.float32)
        if i > 0:
            delta = (delta @ weights[i]) * (activations[i] > 0)
    return loss, grads


def accuracy(model: MLP, features: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of features [N, D] the MLP classifies as labels [N]."""
    return float(np.mean(model.predict(features) == np.asarray(labels)))


def select_hyperparameters(features: np.ndarray, labels: np.ndarray, candidates: Sequence[TrainConfig],
                           validation_fraction: float = 0.1, validation_size: int = 200,
                           smoothing_n: int = 2_000, alpha: float = 0.001, seed: int = 0
                           ) -> tuple[TrainConfig, list[dict]]:
    """Choose a TrainConfig (noise c, widths, epochs, ...) on a validation split of the training features.

    Each candidate is trained on the training part and scored by the feature-space ACR in units of S on
    validation inputs (smoothing with ``smoothing_n`` samples at its own c): with a Lipschitz-like
    conversion the image radius grows with R_F, so this ranks candidates for SC. Returns (best, table).
    """
    from edge_client.smoothing import SmoothingConfig, certify_features, input_rng

    train_idx, val_idx = split_train_validation(len(labels), validation_fraction, seed)
    val_idx = val_idx[:validation_size]
    num_classes = int(labels.max() + 1)
    table = []
    for config in candidates:
        model = train_mlp(features[train_idx], labels[train_idx], config, num_classes=num_classes)
        c = config.noise_c if config.noise_c > 0 else 1e-6
        smoothing = SmoothingConfig(sigma=noise_sigma(model.spread, model.feature_dim, c), n=smoothing_n,
                                    alpha=alpha)
        acr = 0.0
        for i in val_idx:
            cls, r_f = certify_features(model, features[i], smoothing, input_rng(seed, int(i)))
            acr += r_f / model.spread if cls == labels[i] else 0.0
        table.append({"config": asdict(config),
                      "val_clean_accuracy": accuracy(model, features[val_idx], labels[val_idx]),
                      "val_feature_acr_over_S": acr / max(len(val_idx), 1)})
    best = max(range(len(table)), key=lambda k: table[k]["val_feature_acr_over_S"])
    return candidates[best], table


def select_noise_scale(features: np.ndarray, labels: np.ndarray, candidates: Sequence[float],
                       config: TrainConfig = TrainConfig(), validation_fraction: float = 0.1,
                       validation_size: int = 200, smoothing_n: int = 2_000, alpha: float = 0.001
                       ) -> tuple[float, list[dict]]:
    """Choose c alone (the rest fixed) with :func:`select_hyperparameters`; returns (c, table)."""
    configs = [replace(config, noise_c=float(c)) for c in candidates]
    best, table = select_hyperparameters(features, labels, configs, validation_fraction, validation_size,
                                         smoothing_n, alpha, config.seed)
    for row in table:
        row["noise_c"] = row["config"]["noise_c"]
    return best.noise_c, table
