"""MLP (.npz round trip, folded normalization), numpy trainer, feature cache, radius from a curve."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_client.feature_cache import CacheKey, FeatureCache
from edge_client.mlp import MLP, feature_spread, init_mlp, mlp_forward
from edge_client.radius import radii_from_curves, radius_from_curve
from edge_client.training import TrainConfig, accuracy, noise_sigma, select_noise_scale, train_mlp


def _clusters(n: int, d: int = 12, classes: int = 4, scale: float = 250.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, d)) * 2.5
    labels = rng.integers(0, classes, n)
    return ((means[labels] + rng.standard_normal((n, d))) * scale + 40.0).astype(np.float32), labels


def test_mlp_round_trip_and_folded_normalization(tmp_path):
    rng = np.random.default_rng(0)
    model = init_mlp(6, (8, 8), 3, rng.standard_normal(6), 2.5, rng)
    features = rng.standard_normal((5, 6))
    normalized = (features - model.center) * model.input_scale
    unfolded = [(w.astype(np.float64), b.astype(np.float64)) for w, b in zip(model.weights, model.biases,
                                                                            strict=True)]
    np.testing.assert_allclose(model.logits(features), mlp_forward(unfolded, normalized), atol=1e-9)
    model.save(tmp_path / "m.npz")
    loaded = MLP.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.logits(features), model.logits(features))
    assert loaded.spread == model.spread and loaded.hidden_widths == (8, 8)


def test_feature_spread_is_rms_distance_to_mean():
    features = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert feature_spread(features) == pytest.approx(1.0)


def test_trainer_learns_and_is_scale_invariant():
    features, labels = _clusters(1200)
    config = TrainConfig(hidden_widths=(32,), epochs=15, batch_size=64, learning_rate=3e-3, noise_c=0.5)
    model = train_mlp(features[:1000], labels[:1000], config)
    assert accuracy(model, features[1000:], labels[1000:]) > 0.9
    scaled = train_mlp(features[:1000] * 1e-3, labels[:1000], config)
    np.testing.assert_allclose(scaled.predict(features[1000:] * 1e-3), model.predict(features[1000:]))
    assert noise_sigma(model.spread, 12, 1.0) == pytest.approx(model.spread / np.sqrt(12))


def test_noise_scale_is_chosen_on_a_validation_split(monkeypatch):
    """Models are trained on the training part only, scored on held-out validation rows only, and the
    chosen c is the argmax of that validation objective (recomputed here candidate by candidate)."""
    import edge_client.smoothing as smoothing
    import edge_client.training as training

    features, labels = _clusters(600, seed=1)
    config = TrainConfig(hidden_widths=(16,), epochs=2)
    candidates = [0.05, 0.5, 2.0]
    trained_on, scored = [], []
    real_train, real_certify = training.train_mlp, smoothing.certify_features

    def spy_train(x, y, *args, **kwargs):
        trained_on.append(np.array(x, copy=True))
        return real_train(x, y, *args, **kwargs)

    def spy_certify(model, z, *args, **kwargs):
        scored.append(np.array(z, copy=True))
        return real_certify(model, z, *args, **kwargs)

    monkeypatch.setattr(training, "train_mlp", spy_train)
    monkeypatch.setattr(smoothing, "certify_features", spy_certify)
    best, table = select_noise_scale(features, labels, candidates, config, validation_fraction=0.1,
                                     validation_size=20, smoothing_n=500)
    monkeypatch.undo()

    row_of = {row.tobytes(): i for i, row in enumerate(features)}
    assert len(row_of) == len(features)
    train_rows = [{row_of[r.tobytes()] for r in x} for x in trained_on]
    scored_rows = [row_of[z.tobytes()] for z in scored]
    assert len(trained_on) == len(candidates) and all(rows == train_rows[0] for rows in train_rows)
    assert len(train_rows[0]) == 540  # 600 minus the 10% validation split
    assert len(scored_rows) == len(candidates) * 20  # validation_size inputs per candidate
    validation = set(scored_rows)
    assert len(validation) == 20 and not validation & train_rows[0]  # held out, never trained on

    # Recompute the validation objective of each candidate: a model trained on the training part with
    # that c, then the feature-space ACR / S on the validation rows, smoothed at that c.
    train_idx, val_idx = np.array(sorted(train_rows[0])), np.array(sorted(validation))
    objective = []
    for c in candidates:
        model = train_mlp(features[train_idx], labels[train_idx], replace(config, noise_c=c), num_classes=4)
        cfg = smoothing.SmoothingConfig(sigma=noise_sigma(model.spread, model.feature_dim, c), n=500)
        acr = 0.0
        for i in val_idx:
            cls, r_f = smoothing.certify_features(model, features[i], cfg, smoothing.input_rng(0, int(i)))
            acr += r_f / model.spread if cls == labels[i] else 0.0
        objective.append(acr / len(val_idx))
    assert [row["noise_c"] for row in table] == candidates
    np.testing.assert_allclose([row["val_feature_acr_over_S"] for row in table], objective, rtol=1e-9)
    assert len(set(objective)) == len(objective) and max(objective) > 0  # a strict, non-trivial argmax
    assert best == candidates[int(np.argmax(objective))]
    assert best not in (candidates[0], candidates[-1])  # so neither "first" nor "last" would pass


def test_feature_cache_round_trip_and_keying(tmp_path):
    cache = FeatureCache(tmp_path)
    key = CacheKey("fashion-mnist", "train", (0, 5, 9), "ab" * 32)
    calls = []

    def fetch():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    first, _, cached = cache.get_or_fetch(key, fetch, measure=lambda: (0, 0))
    again, _, cached_again = cache.get_or_fetch(key, fetch, measure=lambda: (0, 0))
    assert (cached, cached_again) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(first, again)
    assert cache.get(CacheKey("fashion-mnist", "train", (0, 5, 9), "cd" * 32)) is None
    assert cache.get(CacheKey("fashion-mnist", "train", (0, 5, 8), "ab" * 32)) is None
    assert not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises(ValueError):
        cache.put(key, np.zeros((2, 2)), (2, 0))


def test_radius_from_curve():
    radii = np.array([0.1, 0.2, 0.4, 0.8])
    bounds = np.array([0.5, 1.0, 2.0, 4.0])
    assert radius_from_curve(radii, bounds, 2.5) == 0.4
    assert radius_from_curve(radii, bounds, 2.0) == 0.2  # strict: U(r) < R_F
    assert radius_from_curve(radii, bounds, 0.4) == 0.0
    assert radius_from_curve(radii, bounds, 100.0) == 0.8
    assert radius_from_curve(radii, np.array([0.5, np.nan, 2.0, 4.0]), 1.5) == 0.1
    np.testing.assert_array_equal(radii_from_curves([(radii, bounds)] * 2, np.array([2.5, 0.0])), [0.4, 0.0])
    with pytest.raises(ValueError):
        radius_from_curve(radii, bounds[:2], 1.0)


def test_bench_prints_the_goal_keys():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "edge_client.bench", "--json", "--n", "2000", "--inputs", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["sc_seconds_per_input"] > 0 and 0 < result["sc_peak_rss_mb"] < 1000
    assert result["threads"] == 1 and result["n"] == 2000


def test_feature_cache_remembers_what_fetching_cost(tmp_path):
    """A cached entry keeps the (queries, bytes) it cost, so a re-run can still report the protocol cost."""
    import numpy as np

    from edge_client.feature_cache import CacheKey, FeatureCache

    cache = FeatureCache(tmp_path)
    key = CacheKey("d", "train", (0, 1, 2), "ab" * 32)
    totals = {"queries": 10, "bytes": 1000}

    def fetch():
        totals["queries"] += 3
        totals["bytes"] += 4242
        return np.zeros((3, 2), np.float32)

    measure = lambda: (totals["queries"], totals["bytes"])  # noqa: E731
    _, cost, cached = cache.get_or_fetch(key, fetch, measure)
    assert not cached and cost == cache.fetch_cost(key) == (3, 4242)
    _, cost, cached = cache.get_or_fetch(key, fetch, measure)
    assert cached and cost == (3, 4242) and totals["queries"] == 13
    assert cache.fetch_cost(CacheKey("d", "train", (5,), "ab" * 32)) is None

    # An entry without a recorded cost (an older client's) is fetched again, never reported as free.
    legacy = CacheKey("d", "train", (7, 8, 9), "ab" * 32)
    path = cache.path(legacy)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=np.ones((3, 2), np.float32), indices=np.array([7, 8, 9]),
             model_sha256=np.array("ab" * 32))
    features, cost, cached = cache.get_or_fetch(legacy, fetch, measure)
    assert not cached and cost == (3, 4242) and not features.any() and cache.fetch_cost(legacy) == (3, 4242)
