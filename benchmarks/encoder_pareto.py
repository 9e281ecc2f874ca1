"""Every encoder trained, as linear-probe accuracy against certified Lipschitz bound / feature spread.

``python -m benchmarks.encoder_pareto CARD.json ...`` reads model cards (the ``.json`` the trainer writes
beside each exported encoder: probe accuracy, L/S, the command) and merges them, keyed by the model's
sha256, into a ledger (default ``docs/figures/encoder_pareto.json``), so points from runs whose files are
gone are kept. It then draws ``docs/figures/encoder_pareto.png``: one point per encoder, the shipped ones
(those whose sha256 matches a card under ``models/``) marked, and the Pareto front (no other point has
both higher accuracy and lower L/S) joined. Lower L/S means a feature-space radius converts into a larger
image radius; higher probe accuracy means better downstream classifiers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from jobs.report import write_json

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "docs" / "figures" / "encoder_pareto.json"
FIGURE = ROOT / "docs" / "figures" / "encoder_pareto.png"


def describe(card: dict) -> str:
    """A short label for a card's training recipe, e.g. ``moco λ=0.3 20 ep``; an encoder with a pixel view
    (``services/trainer/pixel_view.py``) is labelled by its base's recipe, e.g. ``… + PCA-128 view ×2``."""
    architecture = card.get("architecture", {})
    if architecture.get("family") == "PixelView":
        view = architecture.get("pixel_view", {})
        if architecture.get("base") is None:
            return f"PCA-{view.get('components')} view alone (no learned features)"
        base = {"training": card.get("training", {}), "architecture": architecture.get("base", {})}
        return f"{describe(base)} + PCA-{view.get('components')} view ×{view.get('view_spread'):g}"
    training = card.get("training", {})
    config = training.get("config", {})
    mode = training.get("mode", config.get("mode", "?"))
    lam = training.get("lam", config.get("lam", 0.0))
    epochs = training.get("epochs", config.get("epochs", "?"))
    if mode == "rrm" and training.get("teacher"):
        mode = "distilled"
    label = f"{mode} λ={lam:g} {epochs} ep" if lam else f"{mode} {epochs} ep"
    channels = architecture.get("channels")
    if channels and list(channels) != [16, 32, 64]:
        label += " wide " + "-".join(str(c) for c in channels)
    if architecture.get("layers", "plain") != "plain":
        label += " " + architecture["layers"].upper()
    if architecture.get("activation", "relu") != "relu":
        label += " " + architecture["activation"]
    return label


def point(card: dict) -> dict:
    """The ledger entry of one card (raises ``KeyError`` naming a missing field)."""
    for field in ("model_sha256", "linear_probe_accuracy", "lipschitz_over_spread"):
        if field not in card:
            raise KeyError(f"model card lacks {field!r}")
    return {
        "model_sha256": card["model_sha256"],
        "label": describe(card),
        "linear_probe_accuracy": float(card["linear_probe_accuracy"]),
        "lipschitz_over_spread": float(card["lipschitz_over_spread"]),
        "lipschitz_bound_l2": float(card.get("lipschitz_bound_l2", float("nan"))),
        "wall_time_s": card.get("wall_time_s"),
        "command": card.get("command", ""),
    }


def merge(ledger: Sequence[dict], cards: Iterable[dict]) -> list[dict]:
    """Ledger entries updated with ``cards`` (a card replaces the entry of the same sha256), by accuracy."""
    by_sha = {entry["model_sha256"]: dict(entry) for entry in ledger}
    for card in cards:
        entry = point(card)
        by_sha[entry["model_sha256"]] = entry
    return sorted(by_sha.values(), key=lambda e: (-e["linear_probe_accuracy"], e["lipschitz_over_spread"]))


def pareto_front(entries: Sequence[dict]) -> list[dict]:
    """Entries no other entry dominates (higher-or-equal accuracy and lower-or-equal L/S, one strictly)."""
    def dominated(a: dict) -> bool:
        return any(
            b["linear_probe_accuracy"] >= a["linear_probe_accuracy"]
            and b["lipschitz_over_spread"] <= a["lipschitz_over_spread"]
            and (b["linear_probe_accuracy"] > a["linear_probe_accuracy"]
                 or b["lipschitz_over_spread"] < a["lipschitz_over_spread"])
            for b in entries
        )
    return sorted((e for e in entries if not dominated(e)), key=lambda e: e["lipschitz_over_spread"])


def shipped_names(models_dir: Path) -> dict[str, str]:
    """sha256 → file name of every encoder card under ``models_dir``."""
    names = {}
    for card_path in sorted(models_dir.glob("*.json")):
        card = json.loads(card_path.read_text())
        if "model_sha256" in card:
            names[card["model_sha256"]] = card.get("file", card_path.stem + ".onnx")
    return names


def plot(entries: Sequence[dict], shipped: dict[str, str], path: Path,
         goal: tuple[float, float] = (0.86, 0.2)) -> None:
    """Probe accuracy against L/S: every encoder (log scale) and a zoom on the robust ones (L/S ≤ 1),
    shipped encoders starred, the Pareto front dashed, the goal region (accuracy ≥ goal[0], L/S ≤ goal[1])
    shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(entries)
    robust = [e for e in entries if e["lipschitz_over_spread"] <= 1.0]
    fig, axes = plt.subplots(1, 2 if robust else 1, figsize=(12, 4.8), dpi=120, squeeze=False)
    for ax, subset, log in ((axes[0][0], entries, True), *(((axes[0][1], robust, False),) if robust else ())):
        xs = [e["lipschitz_over_spread"] for e in subset]
        low, high = min(xs) * (0.5 if log else 0.9), max(xs) * (2.0 if log else 1.35)
        ax.axvspan(low, goal[1], color="tab:green", alpha=0.06)
        ax.axhline(100 * goal[0], color="tab:green", linewidth=1, linestyle=":",
                   label=f"goal: ≥ {100 * goal[0]:g}% at L/S ≤ {goal[1]:g}")
        visible = [e for e in front if e in subset]
        ax.plot([e["lipschitz_over_spread"] for e in visible],
                [100 * e["linear_probe_accuracy"] for e in visible],
                color="0.6", linestyle="--", linewidth=1, label="Pareto front", zorder=1)
        labelled_at: list[tuple[float, float]] = []
        for entry in sorted(subset, key=lambda e: -e["linear_probe_accuracy"]):
            x, y = entry["lipschitz_over_spread"], 100 * entry["linear_probe_accuracy"]
            # labels of points within 0.25 points of accuracy and 10% of L/S of a labelled one go below it
            crowded = any(abs(y - ly) < 0.25 and abs(x - lx) < 0.1 * lx for lx, ly in labelled_at)
            name = shipped.get(entry["model_sha256"])
            ax.scatter([x], [y], marker="*" if name else "o", s=160 if name else 36,
                       color="tab:red" if name else "tab:blue", zorder=2)
            if name or not log:
                ax.annotate(f"{name}: {entry['label']}" if name else entry["label"], (x, y), fontsize=7,
                            xytext=(5, -9 if crowded else 3), textcoords="offset points")
                labelled_at.append((x, y))
        ax.set_xlim(low, high)
        if log:
            ax.set_xscale("log")
            ax.set_title("every encoder trained (★ shipped)")
        else:
            ax.set_title("the robust ones (L/S ≤ 1)")
        ax.set_xlabel("certified Lipschitz bound / feature spread (L/S; lower = larger image radii)")
        ax.set_ylabel("linear-probe accuracy on the test set (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="center right")
    fig.suptitle("Fashion-MNIST encoders: accuracy against certified robustness")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("cards", nargs="*", type=Path, help="model cards to add (trainer's .json)")
    parser.add_argument("--ledger", type=Path, default=LEDGER, help="merged record of every point")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models",
                        help="cards of the shipped encoders")
    args = parser.parse_args(argv)
    ledger = json.loads(args.ledger.read_text())["encoders"] if args.ledger.is_file() else []
    try:
        entries = merge(ledger, (json.loads(p.read_text()) for p in args.cards))
    except (OSError, ValueError, KeyError) as exc:
        print(f"encoder_pareto: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print("encoder_pareto: no cards given and the ledger is empty", file=sys.stderr)
        return 2
    shipped = shipped_names(args.models_dir)
    write_json(args.ledger, {"encoders": entries})
    plot(entries, shipped, args.figure)
    for entry in entries:
        mark = f" [{shipped[entry['model_sha256']]}]" if entry["model_sha256"] in shipped else ""
        print(f"{100 * entry['linear_probe_accuracy']:6.2f}%  L/S {entry['lipschitz_over_spread']:10.4g}  "
              f"{entry['label']}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
