"""Summary numbers of a certification run: clean accuracy, certified accuracy at radii, ACR, costs.

The one metrics module of the client, the jobs and their reports. Arguments always come as
``(correct, radii)``: ``correct [N]`` bool (prediction == label; an abstention is never correct) and
``radii [N]`` certified radii (a negative radius certifies nothing). A mean over no inputs is undefined:
every per-input figure of an empty run is NaN (tables show it as —), never a 0 that reads as a result.

Clean accuracy has one definition: the *base* classifier on the clean image, read from each row's
``clean_prediction``. It is never derived from the smoothed or bounded prediction: rows without it (the
SEaaS methods journal only the smoothed answer) have no clean accuracy (NaN) unless the caller supplies
their clean predictions, and a mix of rows with and without it is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def clean_accuracy(rows: Sequence[dict[str, Any]]) -> float:
    """Accuracy of the base classifier on the clean images (``clean_prediction`` of every row).

    NaN when no row carries a clean prediction or there are no rows; ValueError when only some do (a
    silent fallback to the certified prediction once mixed two definitions in one column).
    """
    have = [r.get("clean_prediction") is not None for r in rows]
    if not any(have):
        return math.nan
    if not all(have):
        raise ValueError(f"{have.count(False)} of {len(rows)} rows have no clean_prediction: clean accuracy "
                         "is the base classifier on the clean image, give it for every row or for none")
    return _mean(np.array([r["clean_prediction"] == r["label"] for r in rows], dtype=bool))


def _mean(values: np.ndarray) -> float:
    """Mean of a 1-D array; NaN for an empty one (no warning)."""
    return float(np.mean(values)) if values.size else math.nan


def certified_accuracy(correct: np.ndarray, radii: np.ndarray, radius: float) -> float:
    """Fraction of inputs predicted correctly with certified radius >= ``radius``; NaN for no inputs."""
    correct = np.asarray(correct, dtype=bool)
    return _mean(correct & (np.asarray(radii, dtype=np.float64) >= radius))


def average_certified_radius(correct: np.ndarray, radii: np.ndarray) -> float:
    """ACR: mean of max(R, 0) * 1[correct]; NaN for no inputs."""
    correct = np.asarray(correct, dtype=bool)
    return _mean(np.where(correct, np.maximum(np.asarray(radii, dtype=np.float64), 0.0), 0.0))


def summarize(rows: Sequence[dict[str, Any]], radii: Sequence[float] = DEFAULT_RADII,
              training_inputs: int = 0, training_queries: int = 0, training_bytes: int = 0) -> dict[str, Any]:
    """Summary of journal rows with keys label, prediction, radius, queries, bytes and ``clean_prediction``.

    Per-test-input figures are NaN when there are no rows; per-training-input ones are 0 without training
    inputs (a model that cost no training queries). ``clean_accuracy``: see :func:`clean_accuracy`.
    """
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    predictions = np.array([r["prediction"] for r in rows], dtype=np.int64)
    radius = np.array([r["radius"] for r in rows], dtype=np.float64)
    correct = predictions == labels

    def per_input(key: str, fallback: str = "") -> float:
        return _mean(np.array([float(r.get(key) or r.get(fallback) or 0.0) for r in rows]))

    return {
        "num_test": len(rows),
        "clean_accuracy": clean_accuracy(rows),
        "certified_accuracy": {f"{r:g}": certified_accuracy(correct, radius, r) for r in radii},
        "acr": average_certified_radius(correct, radius),
        "abstain_rate": _mean(predictions < 0),
        "queries_per_test_input": per_input("queries"),
        "bytes_per_test_input": per_input("bytes"),
        "client_seconds_per_test_input": per_input("client_seconds", "seconds"),
        "service_seconds_per_test_input": per_input("service_seconds"),
        "queries_per_training_input": training_queries / training_inputs if training_inputs else 0.0,
        "bytes_per_training_input": training_bytes / training_inputs if training_inputs else 0.0,
    }
