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
    assert not out.finished and out.radius[0] == 0.0


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
