"""SynBench: closed forms against numeric integration, oracle encoders, the CLI and the shipped ranking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm

from services.common.model_file import load_model_file, model_info
from services.trainer import synbench
from services.trainer.synbench import SynBenchConfig, empirical_auc, reference_auc, synbench_score

ROOT = Path(__file__).resolve().parents[2]
SMALL = SynBenchConfig(separations=(0.2, 0.4, 0.6), samples_per_class=400, seed=3)
SHAPE = (1, 4, 4)


def _flatten(scale: float = 1.0):
    return lambda images: scale * images.reshape(len(images), -1).astype(np.float64)


@pytest.mark.parametrize("s,sigma,a_t", [(0.3, 0.1, 0.7), (1.0, 0.2, 0.9), (0.02, 0.1, 0.7)])
def test_reference_auc_matches_numeric_integration(s, sigma, a_t):
    numeric, _ = quad(lambda e: max(norm.cdf((s - e) / sigma) - a_t, 0.0), 0, s + 10 * sigma, limit=200)
    assert reference_auc(s, sigma, a_t) == pytest.approx(numeric, abs=1e-7)


def test_empirical_auc_matches_a_dense_integral():
    radii = np.abs(np.random.default_rng(0).normal(size=200))
    radii[:30] = 0.0  # wrong predictions
    grid = np.linspace(0, radii.max() + 0.1, 200_001)
    acc = 1 - np.searchsorted(np.sort(radii), grid, "right") / radii.size  # mean(radii > ε)
    numeric = np.trapezoid(np.clip(acc - 0.6, 0, None), grid)
    assert empirical_auc(radii, 0.6) == pytest.approx(numeric, rel=1e-3)


def test_identity_representation_scores_near_one():
    """f(x) = x with L = 1 keeps the raw mixture's trade-off: the score is close to 1 (finite-sample)."""
    result = synbench_score(_flatten(), SHAPE, 1.0, SMALL)
    assert 0.85 < result["synbench_score"] < 1.1


def test_score_is_invariant_to_feature_scale_and_falls_with_the_lipschitz_bound():
    base = synbench_score(_flatten(), SHAPE, 1.0, SMALL)["synbench_score"]
    scaled = synbench_score(_flatten(5.0), SHAPE, 5.0, SMALL)["synbench_score"]
    loose = synbench_score(_flatten(), SHAPE, 4.0, SMALL)["synbench_score"]
    assert scaled == pytest.approx(base, rel=1e-6)
    assert loose < 0.5 * base


def test_a_representation_that_drops_the_signal_scores_zero():
    rng = np.random.default_rng(0)
    result = synbench_score(lambda im: rng.normal(size=(len(im), 3)), SHAPE, 1.0, SMALL)
    assert result["synbench_score"] < 0.05


def test_cli_writes_the_card_and_model_info_returns_it(tmp_path, capsys):
    path = tmp_path / "flat.onnx"
    torch.onnx.export(torch.nn.Flatten().eval(), torch.zeros(1, *SHAPE), str(path), input_names=["images"],
                      output_names=["features"], dynamic_axes={"images": {0: "B"}, "features": {0: "B"}},
                      dynamo=False)
    path.with_suffix(".json").write_text(json.dumps({"lipschitz_bound_l2": 1.0}))
    argv = ["--model", str(path), "--json", "--write-card", "--samples-per-class", "200"]
    argv += ["--separations", "0.3"]
    assert synbench.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["synbench_score"] == printed["synbench_score"] > 0.5
    assert card["synbench"]["threshold_accuracy"] == 0.7
    info = model_info(load_model_file(path), input_shape=SHAPE, feature_dim=16, max_batch_size=1,
                      execution_provider="test")
    assert info.synbench_score == pytest.approx(card["synbench_score"])
    assert info.synbench_threshold_accuracy == pytest.approx(0.7)


@pytest.mark.skipif(not (ROOT / "models/fmnist-robust.onnx").is_file(), reason="shipped encoders absent")
def test_shipped_encoders_rank_like_their_acr():
    """Robust ACR ≫ standard ACR (make run); SynBench must rank them the same way."""
    cfg = SynBenchConfig(separations=(0.4, 0.8), samples_per_class=200)
    scores = {}
    for name in ("robust", "standard"):
        model = ROOT / f"models/fmnist-{name}.onnx"
        lipschitz = json.loads(model.with_suffix(".json").read_text())["lipschitz_bound_l2"]
        scores[name] = synbench_score(synbench.onnx_feature_fn(str(model)), (1, 28, 28), lipschitz, cfg)
    assert scores["robust"]["synbench_score"] > 10 * scores["standard"]["synbench_score"]
