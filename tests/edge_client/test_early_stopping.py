"""Training to convergence: stop at the validation plateau, restore the best epoch (scripted losses)."""

from __future__ import annotations

import pytest

from edge_client.early_stopping import early_stopping_fit


class _Model:
    """Stands in for a torch module: its state is the epoch it last trained."""

    def __init__(self) -> None:
        self.state, self.mode = -1, "eval"

    def train(self) -> None:
        self.mode = "train"

    def eval(self) -> None:
        self.mode = "eval"

    def state_dict(self) -> dict:
        return {"epoch": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state["epoch"]


def _fit(losses, patience=2, max_epochs=20, min_improvement=1e-3):
    model = _Model()

    def step(epoch: int) -> None:
        assert model.mode == "train"
        model.state = epoch

    def validation_loss() -> float:
        return losses[model.state]

    return model, early_stopping_fit(model, step, validation_loss, max_epochs, patience, min_improvement)


def test_stops_after_patience_epochs_without_improvement_and_keeps_the_best():
    model, report = _fit([1.0, 0.5, 0.4, 0.41, 0.3999, 0.45, 0.2, 0.1])
    assert report.epochs_run == 5 and report.best_epoch == 2 and report.stopped_early
    assert model.state == 2 and model.mode == "eval"  # the best epoch's weights, not the last
    assert "kept epoch 3" in report.describe() and "plateau" in report.describe()


def test_max_epochs_without_a_plateau_is_reported_as_such():
    model, report = _fit([1.0 / (k + 1) for k in range(10)], max_epochs=6)
    assert report.epochs_run == 6 and report.best_epoch == 5 and not report.stopped_early
    assert "max epochs" in report.describe()


def test_needs_at_least_one_epoch_and_patience():
    with pytest.raises(ValueError):
        _fit([1.0], patience=0)
