"""Training to convergence, defined once: stop when the validation loss has plateaued, keep the best epoch.

"Converged" means: the loss on a held-out validation split has not decreased by more than
``min_improvement`` (relative) for ``patience`` epochs in a row, or ``max_epochs`` ran out (the report says
which). The weights of the best validation epoch are restored. Used by the SEaaS-DS denoiser and the bench's
white-box reference CNNs; works for any torch module (without a checkpoint torch is only touched through the
module's methods).

An :class:`EpochCheckpoint` makes a fit resumable per epoch: after every epoch the model, the caller's other
training state (optimizer, generator), the best state and the loss history are saved atomically, and a fit
that finds a checkpoint with its key continues after the last saved epoch, bit-identically.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainingReport:
    """What early stopping did: epochs run, the epoch kept (0-based), validation loss per epoch."""

    epochs_run: int
    best_epoch: int
    validation_loss: list[float]
    stopped_early: bool  # True: plateau; False: max_epochs ran out first

    def describe(self) -> str:
        """One line for logs and table notes."""
        how = "val-loss plateau" if self.stopped_early else "max epochs, no plateau"
        return (f"{self.epochs_run} epochs ({how}; kept epoch {self.best_epoch + 1}, val loss "
                f"{self.validation_loss[self.best_epoch]:.4g})")


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where and under which key a fit saves its state after every epoch (torch.save, atomic rename).

    ``key`` names the training (its configuration and data): a file holding another key is ignored and
    overwritten. ``state`` holds the training state besides the model, by name: objects with
    ``state_dict`` / ``load_state_dict`` (an optimizer) or ``get_state`` / ``set_state`` (a torch.Generator).
    The file is kept when the fit ends, so a re-run returns the fitted model without training.
    """

    path: Path
    key: str
    state: Mapping[str, Any] = field(default_factory=dict)

    def save(self, model, progress: dict) -> None:
        """Write the model, ``state`` and ``progress`` (the fit's own counters) to ``path``."""
        import torch

        extra = {name: obj.state_dict() if hasattr(obj, "state_dict") else obj.get_state()
                 for name, obj in self.state.items()}
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        torch.save({"key": self.key, "model": model.state_dict(), "state": extra, **progress}, tmp)
        os.replace(tmp, path)

    def load(self, model) -> dict | None:
        """Restore the model and ``state`` from a checkpoint with this key; the fit's counters, or None."""
        import torch

        if not Path(self.path).is_file():
            return None
        saved = torch.load(self.path, weights_only=True)
        if saved.get("key") != self.key:
            return None
        model.load_state_dict(saved["model"])
        for name, obj in self.state.items():
            (obj.load_state_dict if hasattr(obj, "load_state_dict") else obj.set_state)(saved["state"][name])
        return saved


def training_key(config, *arrays) -> str:
    """sha256 naming a training: ``config``'s repr and the bytes, shapes and dtypes of numpy ``arrays``."""
    import numpy as np

    digest = hashlib.sha256(repr(config).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(array.data)
    return digest.hexdigest()


def early_stopping_fit(model, step: Callable[[int], None], validation_loss: Callable[[], float],
                       max_epochs: int, patience: int, min_improvement: float = 1e-3,
                       progress: Callable[[int, float], None] | None = None,
                       checkpoint: EpochCheckpoint | None = None) -> TrainingReport:
    """Run ``step(epoch)`` (one training epoch, model in train mode) until ``validation_loss()`` (model in
    eval mode) has not improved by ``min_improvement`` (relative) for ``patience`` epochs; loads the best
    epoch's weights into ``model`` and leaves it in eval mode. ``progress(epoch, val_loss)`` per epoch
    (replayed for the epochs a ``checkpoint`` restores)."""
    if max_epochs < 1 or patience < 1:
        raise ValueError("need max_epochs >= 1 and patience >= 1")
    best, best_epoch, best_state, history, done = float("inf"), 0, None, [], False
    saved = checkpoint.load(model) if checkpoint is not None else None
    if saved is not None:
        best, best_epoch, best_state = saved["best"], saved["best_epoch"], saved["best_state"]
        history, done = list(saved["history"]), saved["done"]
        for epoch, loss in enumerate(history):
            if progress is not None:
                progress(epoch, loss)
    for epoch in range(len(history), max_epochs):
        if done:
            break
        model.train()
        step(epoch)
        model.eval()
        loss = float(validation_loss())
        history.append(loss)
        if best_state is None or loss < best - min_improvement * abs(best):
            best, best_epoch, best_state = loss, epoch, copy.deepcopy(model.state_dict())
        else:
            done = epoch - best_epoch >= patience
        if checkpoint is not None:
            checkpoint.save(model, {"best": best, "best_epoch": best_epoch, "best_state": best_state,
                                    "history": history, "done": done})
        if progress is not None:
            progress(epoch, loss)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainingReport(len(history), best_epoch, history, len(history) < max_epochs)
