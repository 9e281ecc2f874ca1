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


class _Killed(Exception):
    """Stands in for the end of a work session."""


def _torch_fit(checkpoint=None, kill_after=None, max_epochs=6, patience=2, seed=0):
    """A tiny torch fit (Adam, generator-drawn batches and noise); (model, report, epochs stepped)."""
    torch = pytest.importorskip("torch")
    from edge_client.early_stopping import EpochCheckpoint

    torch.manual_seed(seed)
    data_gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 5, generator=data_gen), torch.randn(64, 1, generator=data_gen)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    stepped = []

    def step(epoch: int) -> None:
        stepped.append(epoch)
        order = torch.randperm(64, generator=gen)
        for start in range(0, 64, 16):
            rows = order[start:start + 16]
            noisy = x[rows] + 0.1 * torch.randn(x[rows].shape, generator=gen)
            loss = torch.nn.functional.mse_loss(model(noisy), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def validation_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(x), y))

    def progress(epoch: int, loss: float) -> None:
        if epoch == kill_after:
            raise _Killed

    saving = None if checkpoint is None else EpochCheckpoint(checkpoint[0], checkpoint[1],
                                                             {"optimizer": optimizer, "generator": gen})
    report = early_stopping_fit(model, step, validation_loss, max_epochs, patience, 1e-3, progress, saving)
    return model, report, stepped


def _same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kill_after", [0, 2])
def test_a_fit_killed_after_an_epoch_resumes_bit_identically(tmp_path, kill_after):
    reference, reference_report, _ = _torch_fit()
    path = tmp_path / "fit.ckpt"
    with pytest.raises(_Killed):
        _torch_fit((path, "run-a"), kill_after=kill_after)
    model, report, stepped = _torch_fit((path, "run-a"))
    assert stepped == list(range(kill_after + 1, reference_report.epochs_run))  # only the missing epochs
    assert report == reference_report and _same_weights(model, reference)
    again, again_report, stepped = _torch_fit((path, "run-a"))  # finished: the checkpoint is the result
    assert stepped == [] and again_report == reference_report and _same_weights(again, reference)


def test_a_checkpoint_of_another_training_is_not_used(tmp_path):
    path = tmp_path / "fit.ckpt"
    with pytest.raises(_Killed):
        _torch_fit((path, "run-a"), kill_after=1, seed=1)
    model, _, stepped = _torch_fit((path, "run-b"))  # another key: trained from scratch
    reference, _, _ = _torch_fit()
    assert stepped[0] == 0 and _same_weights(model, reference)
