"""The radius search returns only verified radii, within tolerance of the threshold, and honours deadlines."""

from __future__ import annotations

import time

import numpy as np
import pytest
from engine_nets import engine_for, images

from services.perturb.engine import DeadlineExceeded
from services.perturb.engine.search import SearchConfig, search_radius


def _recording(fn):
    seen: list[tuple[int, float, float]] = []

    def evaluate(rows, radii):
        u = fn(rows, radii)
        seen.extend(zip(rows.tolist(), radii.tolist(), u.tolist(), strict=True))
        return u

    return evaluate, seen


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_search_finds_threshold_and_only_returns_verified(k):
    slopes = np.array([0.5, 3.0, 40.0, 1e-3])
    evaluate, seen = _recording(lambda rows, r: slopes[rows] * r + 0.1 * (slopes[rows] * r) ** 2)
    rf = np.array([1.0, 1.0, 2.0, 5.0])
    truth = np.array([(-1 + np.sqrt(1 + 0.4 * rf[i])) / (0.2 * slopes[i]) for i in range(4)])
    out = search_radius(evaluate, rf, guess=rf / (2 * slopes), cfg=SearchConfig(radii_per_round=k))
    assert out.finished
    assert np.all(out.radius <= truth) and np.all(out.radius >= truth / (1 + 1e-3))
    verified = {(i, r) for i, r, u in seen if u < rf[i]}
    assert all((i, r) in verified for i, r in enumerate(out.radius))
    assert out.evaluations == len(seen)


@pytest.mark.parametrize("seed_over_truth", [1.0, 1e-3, 0.5, 0.9995, 1.5, 1e3])
def test_seeded_search_verifies_its_seed_and_settles_fast_when_it_is_right(seed_over_truth):
    slopes = np.array([0.5, 3.0])
    evaluate, seen = _recording(lambda rows, r: slopes[rows] * r + 0.1 * (slopes[rows] * r) ** 2)
    rf = np.array([1.0, 2.0])
    truth = (-1 + np.sqrt(1 + 0.4 * rf)) / (0.2 * slopes)
    seed = truth * seed_over_truth / (1 + 2e-4)  # a hair under: an exact seed is a verified radius
    out = search_radius(evaluate, rf, guess=rf / slopes, cfg=SearchConfig(radii_per_round=2), seed=seed)
    assert out.finished
    assert np.all(out.radius <= truth) and np.all(out.radius >= truth / (1 + 1e-3))
    verified = {(i, r) for i, r, u in seen if u < rf[i]}
    assert all((i, r) in verified for i, r in enumerate(out.radius))  # a wrong seed is never trusted
    if seed_over_truth == 1.0:
        assert out.evaluations == 4  # seed and seed·(1 + tol), one round


def test_engine_crown_seeded_by_crown_ibp_matches_the_unseeded_search(tmp_path, monkeypatch):
    from services.perturb.engine import engine as engine_mod

    eng, _ = engine_for("plain", 0, tmp_path)
    x, rf = images(3, 0), np.array([0.05, 0.2, 1.0])
    seeded = eng.image_radius(x, rf, method="crown")
    monkeypatch.setattr(engine_mod, "SEED_METHOD", {})
    plain = eng.image_radius(x, rf, method="crown")
    assert seeded.method_used == ["crown"] * 3
    np.testing.assert_allclose(seeded.image_radius, plain.image_radius, rtol=2e-3)
    u = eng.curve(x, seeded.image_radius[:, None], method="crown").bounds[:, 0]  # CROWN itself verifies it
    assert np.all(u < rf)


def test_search_is_sound_for_a_non_monotone_bound():
    def bumpy(rows, r):
        return r + np.where((r > 0.3) & (r < 0.35), 10.0, 0.0)

    evaluate, seen = _recording(bumpy)
    out = search_radius(evaluate, np.array([1.0]), guess=np.array([0.9]))
    assert bumpy(np.array([0]), out.radius)[0] < 1.0


def test_zero_and_negative_feature_radius_give_zero():
    out = search_radius(lambda rows, r: r, np.array([0.0, -1.0]), guess=np.array([1.0, 1.0]))
    assert np.all(out.radius == 0) and out.evaluations == 0


def test_search_stops_at_the_deadline_with_verified_radius():
    out = search_radius(
        lambda rows, r: r, np.array([1.0]), guess=np.array([1e-9]), deadline=time.monotonic() - 1
    )
    assert not out.finished and out.stopped_at_deadline and out.radius[0] == 0.0
    assert not search_radius(lambda rows, r: r, np.array([1.0]), guess=np.array([0.5])).stopped_at_deadline


def test_engine_deadlines(tmp_path):
    eng, _ = engine_for("plain", 0, tmp_path)
    x = images(2, 0)
    with pytest.raises(DeadlineExceeded):
        eng.image_radius(x, np.array([1.0, 1.0]), deadline=time.monotonic() - 1.0)
    with pytest.raises(DeadlineExceeded):
        eng.image_radius(x, np.array([1.0, 1.0]), method="crown", deadline=time.monotonic() + 1e-4)
    # AUTO with a tight budget still answers with at least the Lipschitz radius
    lip = eng.image_radius(x, np.array([1.0, 1.0]), method="lipschitz").image_radius
    res = eng.image_radius(x, np.array([1.0, 1.0]), deadline=time.monotonic() + 0.05)
    assert np.all(res.image_radius >= lip)


def _floored(floor: float, slope: float):
    """U(r) = floor + slope·r for r > 0: a bound with a floating-point floor (the served rounding error)."""
    def evaluate(rows: np.ndarray, radii: np.ndarray) -> np.ndarray:
        evaluate.calls += len(radii)
        return floor + slope * radii
    evaluate.calls = 0
    return evaluate


@pytest.mark.parametrize("target_over_floor", [0.5, 0.99, 1.0001, 1.05, 3.0])
def test_a_floor_near_the_feature_radius_costs_few_rounds(target_over_floor):
    """U(0⁺) = 0.0092 with R_F just above or below it (make run's slow BC input): the search answers the
    largest verified radius in a few rounds, knowing only half the floor (the point error E(x0))."""
    floor, slope = 0.0092, 0.5
    target = np.array([floor * target_over_floor])
    evaluate = _floored(floor, slope)
    cfg = SearchConfig(radii_per_round=2)
    out = search_radius(evaluate, target, target / slope, cfg=cfg, floor=np.array([floor / 2]))
    truth = max(target[0] - floor, 0.0) / slope
    assert out.finished
    assert floor + slope * out.radius[0] < target[0] or out.radius[0] == 0  # verified (or nothing)
    assert out.radius[0] >= truth / (1 + 2 * cfg.relative_tolerance) or truth < cfg.smallest_radius * 10
    assert evaluate.calls <= 40, evaluate.calls


def test_a_floor_at_or_above_the_feature_radius_answers_zero_without_probing():
    evaluate = _floored(0.01, 1.0)
    out = search_radius(evaluate, np.array([0.005, 0.01, 0.02]), np.full(3, 0.01), floor=np.full(3, 0.01))
    assert evaluate.calls > 0  # the third image is searched
    assert out.radius[0] == 0 and out.radius[1] == 0 and out.radius[2] > 0
