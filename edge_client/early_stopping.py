"""Training to convergence, defined once: stop when the validation loss has plateaued, keep the best epoch.

"Converged" means: the loss on a held-out validation split has not decreased by more than
``min_improvement`` (relative) for ``patience`` epochs in a row, or ``max_epochs`` ran out (the report says
which). The weights of the best validation epoch are restored. Used by the SEaaS-DS denoiser and the bench's
white-box reference CNNs; works for any torch module (torch is only touched through the module's methods).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass


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


def early_stopping_fit(model, step: Callable[[int], None], validation_loss: Callable[[], float],
                       max_epochs: int, patience: int, min_improvement: float = 1e-3,
                       progress: Callable[[int, float], None] | None = None) -> TrainingReport:
    """Run ``step(epoch)`` (one training epoch, model in train mode) until ``validation_loss()`` (model in
    eval mode) has not improved by ``min_improvement`` (relative) for ``patience`` epochs; loads the best
    epoch's weights into ``model`` and leaves it in eval mode. ``progress(epoch, val_loss)`` per epoch."""
    if max_epochs < 1 or patience < 1:
        raise ValueError("need max_epochs >= 1 and patience >= 1")
    best, best_epoch, best_state, history = float("inf"), 0, None, []
    for epoch in range(max_epochs):
        model.train()
        step(epoch)
        model.eval()
        loss = float(validation_loss())
        history.append(loss)
        if progress is not None:
            progress(epoch, loss)
        if best_state is None or loss < best - min_improvement * abs(best):
            best, best_epoch, best_state = loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainingReport(len(history), best_epoch, history, len(history) < max_epochs)
