"""Semantic certificates on the client: certified brightness / contrast ranges per test input.

A journaled BC or SC row already holds the feature radius R_F the client certified around f(x) and the
prediction it covers. One F2ISemantic query per perturbation kind turns R_F into the largest certified
range: |b| ≤ B for brightness (x + b·1) or |c − 1| ≤ C for contrast (c·x), unclipped images, as the
contract states. The same row's ℓ2 radius R implies a floor, B = R/√d and C = R/‖x‖₂ (the whole
parameter box then lies in the ℓ2 ball) — sound only when that ℓ2 radius was certified without the pixel
box, since x + b·1 leaves [0, 1]. A row keeps the service's answer (``semantic``), the floor
(``l2_implied``) and the larger of the two where the floor is sound (``certified``). Rows are journaled (one
per input and kind) so a killed run repeats no queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_client.journal import Journal

KINDS = ("brightness", "contrast")
# certified-accuracy levels of the summary: brightness |b| and contrast |c - 1|, raw [0, 1] pixel units
LEVELS = {"brightness": (0.01, 0.02, 0.03, 0.05), "contrast": (0.02, 0.05, 0.1, 0.2)}


def l2_implied(image_radius: float, image: np.ndarray, kind: str) -> float:
    """Parameter range an ℓ2 certificate R implies for ``kind``: R / max over the unit box of ‖A θ‖₂."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = np.asarray(image, dtype=np.float64)
    per_unit = np.sqrt(x.size) if kind == "brightness" else float(np.linalg.norm(x))
    return float(image_radius / per_unit) if per_unit > 0 else float("inf")


def semantic_row(row: dict[str, Any], image: np.ndarray, perturb, kind: str, *, l2_unclipped: bool,
                 relative_tolerance: float = 0.0) -> dict[str, Any]:
    """The semantic journal row of one certified ℓ2 row (1 F2ISemantic query when R_F > 0, else none).

    ``l2_unclipped``: the row's ℓ2 radius was certified over the whole ball, not its intersection with the
    pixel box, so its implied range is a sound floor of the certificate.
    """
    feature_radius = float(row.get("feature_radius") or 0.0)
    before = perturb.usage.snapshot()
    semantic, method = 0.0, "none"
    if row["prediction"] >= 0 and feature_radius > 0:
        answer = perturb.semantic(image[None], np.array([feature_radius]), perturbation=kind,
                                  relative_tolerance=relative_tolerance)
        semantic = float(answer.brightness[0] if kind == "brightness" else answer.contrast[0])
        method = answer.methods_used[0]
    spent = perturb.usage.since(before)
    implied = l2_implied(float(row["radius"]), image, kind)
    return {"index": int(row["index"]), "label": int(row["label"]), "prediction": int(row["prediction"]),
            "kind": kind, "feature_radius": feature_radius, "l2_radius": float(row["radius"]),
            "semantic": semantic, "l2_implied": implied,
            "certified": max(semantic, implied) if l2_unclipped else semantic,
            "method_used": method, "queries": spent.queries, "bytes": spent.bytes}


def run_semantic(journal: Journal, rows: Sequence[dict[str, Any]], images: dict[int, np.ndarray], perturb,
                 kind: str, *, l2_unclipped: bool, relative_tolerance: float = 0.0,
                 on_row: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Semantic rows for every ℓ2 row not yet in ``journal``; ``images`` maps test index -> [C, H, W]."""
    done = journal.done
    for row in rows:
        if int(row["index"]) in done:
            continue
        out = semantic_row(row, images[int(row["index"])], perturb, kind, l2_unclipped=l2_unclipped,
                           relative_tolerance=relative_tolerance)
        journal.append(out)
        if on_row is not None:
            on_row(out)
    wanted = {int(r["index"]) for r in rows}
    return [r for r in journal.rows() if int(r["index"]) in wanted]


def summarize_semantic(rows: Sequence[dict[str, Any]], levels: Sequence[float]) -> dict[str, Any]:
    """Certified accuracy at each level for the certificate and for the ℓ2-implied floor alone; the median
    ratio of the service's semantic answer to that floor (how much the semantic query adds)."""
    correct = np.array([r["prediction"] == r["label"] for r in rows], dtype=bool)
    semantic = np.array([r["certified"] for r in rows], dtype=np.float64)
    answered = np.array([r["semantic"] for r in rows], dtype=np.float64)
    implied = np.array([r["l2_implied"] for r in rows], dtype=np.float64)
    certified = correct & (answered > 0) & (implied > 0)
    ratio = answered[certified] / implied[certified]
    count = max(len(rows), 1)
    return {
        "num_test": len(rows),
        "certified_accuracy": {f"{v:g}": float(np.mean(correct & (semantic >= v))) if len(rows) else 0.0
                               for v in levels},
        "l2_implied_certified_accuracy": {f"{v:g}": float(np.mean(correct & (implied >= v)))
                                          if len(rows) else 0.0 for v in levels},
        "mean_certified": float(np.mean(np.where(correct, semantic, 0.0))) if len(rows) else 0.0,
        "mean_l2_implied": float(np.mean(np.where(correct, implied, 0.0))) if len(rows) else 0.0,
        "median_ratio_over_l2_implied": float(np.median(ratio)) if ratio.size else None,
        "min_ratio_over_l2_implied": float(ratio.min()) if ratio.size else None,
        "queries_per_test_input": sum(int(r["queries"]) for r in rows) / count,
        "bytes_per_test_input": sum(int(r["bytes"]) for r in rows) / count,
    }
