"""train_mlp resumes per epoch from its checkpoint, bit-identically, and never from another training's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_client.training import TrainConfig, train_mlp

CONFIG = TrainConfig(hidden_widths=(16,), epochs=4, batch_size=32, noise_c=0.5, weight_decay=1e-4, seed=3)


class _Killed(Exception):
    """Stands in for the end of a work session."""


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(150, 6)).astype(np.float32)
    return features, (features[:, 0] + features[:, 1] > 0).astype(np.int64) + (features[:, 2] > 1)


def _kill_after(k: int):
    def progress(epoch: int, loss: float) -> None:
        if epoch == k:
            raise _Killed
    return progress


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases, strict=True))


@pytest.mark.parametrize("k", [0, 2])
def test_training_killed_after_epoch_k_resumes_to_the_same_weights(tmp_path, k):
    features, labels = _data()
    losses: list[float] = []
    reference = train_mlp(features, labels, CONFIG, progress=lambda e, loss: losses.append(loss))
    path = tmp_path / "mlp.npz"
    with pytest.raises(_Killed):
        train_mlp(features, labels, CONFIG, progress=_kill_after(k), checkpoint=path)
    replayed: list[float] = []
    resumed = train_mlp(features, labels, CONFIG, progress=lambda e, loss: replayed.append(loss),
                        checkpoint=path)
    assert _same(resumed, reference) and replayed == losses
    assert _same(train_mlp(features, labels, CONFIG, progress=_kill_after(-1), checkpoint=path), reference)


def test_a_checkpoint_of_another_config_or_data_is_not_used(tmp_path):
    features, labels = _data()
    path = tmp_path / "mlp.npz"
    other = replace(CONFIG, learning_rate=0.01)
    with pytest.raises(_Killed):
        train_mlp(features, labels, other, progress=_kill_after(1), checkpoint=path)
    epochs: list[int] = []
    resumed = train_mlp(features, labels, CONFIG, progress=lambda e, loss: epochs.append(e), checkpoint=path)
    assert epochs == [0, 1, 2, 3] and _same(resumed, train_mlp(features, labels, CONFIG))
    shifted = features + np.float32(1e-3)
    epochs.clear()
    train_mlp(shifted, labels, CONFIG, progress=lambda e, loss: epochs.append(e), checkpoint=path)
    assert epochs == [0, 1, 2, 3]  # the finished checkpoint above belongs to other features


def test_checkpointing_does_not_change_the_result(tmp_path):
    features, labels = _data(1)
    assert _same(train_mlp(features, labels, CONFIG, checkpoint=tmp_path / "mlp.npz"),
                 train_mlp(features, labels, CONFIG))
