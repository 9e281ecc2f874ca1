"""Randomized smoothing: Clopper-Pearson vs statsmodels, linear-classifier oracle, abstain, sampler."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edge_client.mlp import MLP
from edge_client.smoothing import (
    ABSTAIN,
    SmoothingConfig,
    binomial_two_sided_p_half,
    certify,
    certify_features,
    clopper_pearson_lower,
    fill_standard_normal,
    input_rng,
    mlp_classifier,
    predict_features,
)


def _linear_mlp(weights: np.ndarray, biases: np.ndarray) -> MLP:
    """A 'MLP' with no hidden layer (identity normalization): g(z) = W z + b."""
    d = weights.shape[1]
    return MLP((weights.astype(np.float32),), (biases.astype(np.float32),), np.zeros(d, np.float32),
               1.0, float(np.sqrt(d)))


def _exact_distance(weights, biases, z) -> tuple[int, float]:
    logits = weights @ z + biases
    y = int(np.argmax(logits))
    dists = [(logits[y] - logits[j]) / np.linalg.norm(weights[y] - weights[j])
             for j in range(len(biases)) if j != y]
    return y, float(min(dists))


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_clopper_pearson_matches_statsmodels(alpha):
    from statsmodels.stats.proportion import proportion_confint

    for n in [1, 10, 100, 1000, 100_000]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]
            assert float(clopper_pearson_lower(k, n, alpha)) == pytest.approx(expected, abs=1e-12, rel=1e-9)


def test_binomial_test_matches_scipy():
    for a, b in [(0, 0), (5, 0), (60, 40), (50, 50), (530, 470), (9, 1)]:
        if a + b == 0:
            continue
        expected = stats.binomtest(max(a, b), a + b, 0.5).pvalue
        assert binomial_two_sided_p_half(a, b) == pytest.approx(expected, rel=1e-9)


def test_normal_sampler_is_standard_normal():
    out = fill_standard_normal(np.random.default_rng(0), np.empty((1001, 3), np.float32))
    assert stats.kstest(out.ravel(), "norm").pvalue > 0.01
    assert abs(out.mean()) < 0.05 and abs(out.std() - 1) < 0.05


def test_linear_binary_radius_is_sound_and_tight():
    """Linear binary classifier: sigma Phi^-1(Phi(dist / sigma)) = dist as n -> inf."""
    rng = np.random.default_rng(1)
    d = 16
    weights, biases = rng.standard_normal((2, d)), rng.standard_normal(2)
    mlp = _linear_mlp(weights, biases)
    sigma = 0.5
    config = SmoothingConfig(sigma=sigma, n=100_000)
    for i in range(8):
        z = rng.standard_normal(d)
        y, dist = _exact_distance(weights, biases, z)
        # put z at a distance where p_A ~ 0.99: R is within 10% only where p_A is not too close to 1
        normal = (weights[y] - weights[1 - y]) / np.linalg.norm(weights[y] - weights[1 - y])
        z = z + (2.2 * sigma - dist) * normal
        y, dist = _exact_distance(weights, biases, z)
        cls, radius = certify_features(mlp, z, config, input_rng(0, i))
        assert cls == y
        assert radius <= dist
        assert radius >= 0.9 * dist


def test_linear_multiclass_radius_never_exceeds_distance_to_boundary():
    rng = np.random.default_rng(2)
    d, c = 12, 4
    weights, biases = rng.standard_normal((c, d)), rng.standard_normal(c)
    mlp = _linear_mlp(weights, biases)
    config = SmoothingConfig(sigma=0.3, n=100_000)
    certified = 0
    for i in range(20):
        z = rng.standard_normal(d) * 2
        y, dist = _exact_distance(weights, biases, z)
        cls, radius = certify_features(mlp, z, config, input_rng(1, i))
        if cls != ABSTAIN:
            certified += 1
            assert cls == y and radius <= dist
    assert certified >= 5


def test_abstains_on_the_boundary_and_predict_abstains_or_agrees():
    weights, biases = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2)
    mlp = _linear_mlp(weights, biases)
    config = SmoothingConfig(sigma=1.0, n=10_000)
    assert certify_features(mlp, np.zeros(2), config, input_rng(0, 0)) == (ABSTAIN, 0.0)
    assert predict_features(mlp, np.array([3.0, 0.0]), config, input_rng(0, 1)) == 0
    outcomes = [predict_features(mlp, np.zeros(2), config, input_rng(0, i)) for i in range(20)]
    assert sum(o != ABSTAIN for o in outcomes) <= 2  # wrong-confidence rate <= alpha-ish


def test_generic_path_agrees_with_fast_feature_path():
    rng = np.random.default_rng(3)
    weights, biases = rng.standard_normal((3, 6)), rng.standard_normal(3)
    mlp = _linear_mlp(weights, biases)
    z = rng.standard_normal(6)
    config = SmoothingConfig(sigma=0.4, n=20_000)
    fast = certify_features(mlp, z, config, input_rng(5, 0))
    generic = certify(mlp_classifier(mlp), z, 3, config, input_rng(5, 0))
    assert fast[0] == generic[0]
    assert fast[1] == pytest.approx(generic[1], rel=1e-3, abs=1e-6)


def test_certify_is_reproducible_per_seed_and_index():
    rng = np.random.default_rng(4)
    mlp = _linear_mlp(rng.standard_normal((3, 5)), rng.standard_normal(3))
    z = rng.standard_normal(5)
    config = SmoothingConfig(sigma=0.5, n=5_000)
    first = certify_features(mlp, z, config, input_rng(7, 3))
    assert first == certify_features(mlp, z, config, input_rng(7, 3))
