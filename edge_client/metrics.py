"""Summary numbers of a certification run: clean accuracy, certified accuracy at radii, ACR, costs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def certified_accuracy(correct: np.ndarray, radii: np.ndarray, radius: float) -> float:
    """Fraction of inputs predicted correctly with certified radius >= ``radius`` (abstain = wrong)."""
    correct = np.asarray(correct, dtype=bool)
    return float(np.mean(correct & (np.asarray(radii) >= radius))) if correct.size else 0.0


def average_certified_radius(correct: np.ndarray, radii: np.ndarray) -> float:
    """ACR: mean of R * 1[correct]."""
    correct = np.asarray(correct, dtype=bool)
    if not correct.size:
        return 0.0
    return float(np.mean(np.where(correct, np.asarray(radii, dtype=np.float64), 0.0)))


def summarize(rows: Sequence[dict[str, Any]], radii: Sequence[float] = DEFAULT_RADII,
              training_inputs: int = 0, training_queries: int = 0, training_bytes: int = 0) -> dict[str, Any]:
    """Summary of journal rows with keys label, prediction, radius, queries, bytes (and optionally clean)."""
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    predictions = np.array([r["prediction"] for r in rows], dtype=np.int64)
    radius = np.array([r["radius"] for r in rows], dtype=np.float64)
    correct = predictions == labels
    clean = np.array([r.get("clean_prediction", r["prediction"]) for r in rows], dtype=np.int64) == labels
    count = max(len(rows), 1)
    return {
        "num_test": len(rows),
        "clean_accuracy": float(np.mean(clean)) if len(rows) else 0.0,
        "certified_accuracy": {f"{r:g}": certified_accuracy(correct, radius, r) for r in radii},
        "acr": average_certified_radius(correct, radius),
        "abstain_rate": float(np.mean(predictions < 0)) if len(rows) else 0.0,
        "queries_per_test_input": sum(int(r.get("queries", 0)) for r in rows) / count,
        "bytes_per_test_input": sum(int(r.get("bytes", 0)) for r in rows) / count,
        "client_seconds_per_test_input": sum(float(r.get("client_seconds") or r.get("seconds") or 0.0)
                                             for r in rows) / count,
        "service_seconds_per_test_input": sum(float(r.get("service_seconds") or 0.0) for r in rows) / count,
        "queries_per_training_input": training_queries / training_inputs if training_inputs else 0.0,
        "bytes_per_training_input": training_bytes / training_inputs if training_inputs else 0.0,
    }
