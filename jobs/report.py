"""Result rows of the main job and the benchmark: certified-accuracy curves, markdown tables, plots.

A *row* is a flat dict: one certification pipeline on one encoder. Pure functions, except the writers. The
numbers come from ``edge_client.metrics``, the one metrics module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_client.metrics import certified_accuracy


def radius_key(radius: float) -> str:
    """Column name of certified accuracy at an ℓ2 image radius, e.g. ``certified_accuracy_0.25``."""
    return f"certified_accuracy_{radius:g}"


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``columns`` (missing values shown as —)."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (tmp file + rename), so a killed job never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")
    os.replace(tmp, path)


def plot_certified_accuracy(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str,
                            max_radius: float = 1.5) -> None:
    """Certified accuracy against ℓ2 radius, one line per pipeline; ``curves[label] = (correct, radii)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, max_radius, 301)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for label, (correct, radii) in curves.items():
        ax.plot(grid, [certified_accuracy(correct, radii, r) for r in grid], label=label, linewidth=1.8)
    ax.set_xlabel("ℓ2 radius (raw [0, 1] pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(0.0, max_radius)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
