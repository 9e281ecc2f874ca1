"""The one metrics module: hand-computed values, one argument order (correct, radii), NaN for no inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_client.metrics import average_certified_radius, certified_accuracy, clean_accuracy, summarize


def test_certified_accuracy_and_acr_by_hand():
    correct = np.array([True, True, False, False])
    radii = np.array([0.5, 0.2, -1.0, 1.0])  # -1: abstained
    assert certified_accuracy(correct, radii, 0.0) == 0.5
    assert certified_accuracy(correct, radii, 0.25) == 0.25
    assert certified_accuracy(correct, radii, 1.0) == 0.0  # the r=1 one is wrong
    assert average_certified_radius(correct, radii) == pytest.approx((0.5 + 0.2) / 4)


def test_a_negative_radius_certifies_nothing():
    correct, radii = np.array([True]), np.array([-1.0])
    assert certified_accuracy(correct, radii, 0.0) == 0.0
    assert average_certified_radius(correct, radii) == 0.0


def test_no_inputs_have_no_accuracy():
    assert math.isnan(certified_accuracy([], [], 0.0))
    assert math.isnan(average_certified_radius(np.array([], bool), np.array([])))
    summary = summarize([], training_inputs=10, training_queries=10)
    assert summary["num_test"] == 0 and summary["queries_per_training_input"] == 1.0
    for key in ("clean_accuracy", "acr", "abstain_rate", "queries_per_test_input", "bytes_per_test_input"):
        assert math.isnan(summary[key]), key
    assert all(math.isnan(v) for v in summary["certified_accuracy"].values())


def test_summary_of_rows_matches_the_arrays():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 3, 50), rng.integers(-1, 3, 50)
    radii = rng.random(50)
    clean = rng.integers(0, 3, 50)
    rows = [{"label": int(lab), "prediction": int(p), "clean_prediction": int(c), "radius": float(r),
             "queries": 2, "bytes": 10, "client_seconds": 0.5, "service_seconds": 0.25}
            for lab, p, c, r in zip(labels, predictions, clean, radii, strict=True)]
    summary = summarize(rows, radii=(0.0, 0.5), training_inputs=100, training_queries=100, training_bytes=700)
    correct = predictions == labels
    assert summary["acr"] == pytest.approx(np.mean(np.where(correct, radii, 0.0)))
    assert summary["certified_accuracy"]["0.5"] == pytest.approx(np.mean(correct & (radii >= 0.5)))
    assert summary["abstain_rate"] == pytest.approx(np.mean(predictions < 0))
    assert (summary["queries_per_test_input"], summary["bytes_per_training_input"]) == (2.0, 7.0)
    assert summary["client_seconds_per_test_input"] == 0.5
    assert summary["clean_accuracy"] == pytest.approx(np.mean(clean == labels))


def test_clean_accuracy_is_never_the_certified_prediction():
    # the base classifier is right on the clean image, the smoothed one abstains: clean accuracy 1, not 0
    rows = [{"label": 1, "prediction": -1, "clean_prediction": 1, "radius": 0.0}]
    assert clean_accuracy(rows) == 1.0 and summarize(rows)["clean_accuracy"] == 1.0
    unknown = [{"label": 1, "prediction": 1, "radius": 0.5}]  # e.g. a SEaaS journal row: no fallback
    assert math.isnan(summarize(unknown)["clean_accuracy"])
    with pytest.raises(ValueError, match="1 of 2 rows have no clean_prediction"):
        summarize(rows + unknown)
