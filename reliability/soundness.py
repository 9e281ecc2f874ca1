"""Soundness under attack: PGD never pushes f(x+δ) farther than R_F inside a certified image radius.

Semantic certificates (brightness x + b·1, contrast c·x) are checked the same way on a dense grid over the
certified parameter range, refined by a bounded scalar search at the grid's worst point.

For each method the engine returns a radius R for (image, R_F); a PGD attack (``services.trainer.pgd``:
random restarts, cosine step-size schedule, normalized ℓ2 gradient steps) maximizes ‖f(x+δ) − f(x)‖₂ over
‖δ‖₂ ≤ R (∩ [0, 1] when clip_to_pixel_box). A violation is an attack point whose shift reaches R_F, measured
in float64 on the bound graph and in float32 by ``served`` (ONNX Runtime as the Feature-API runs it:
``services.encoder.onnx_model.OnnxEncoder.run``). ``attack_reach`` = max shift / R_F shows how close
the attack gets. The full classifier g∘f is attacked too: inside the image radius of the client's BC
feature radius, no δ may change g's prediction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edge_client.mlp import feature_spread
from reaas.methods import BOUND_METHODS
from services.trainer.pgd import AttackConfig, pgd_ascent, project

METHODS = (*BOUND_METHODS, "auto")
SEMANTIC_KINDS = ("brightness", "contrast")


# features [B, D] float32 of images [B, C, H, W] float32, as served
Served = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AttackSettings(AttackConfig):
    """The PGD attack (steps, restarts, cosine step schedule, seed) and how many rows it attacks at once."""

    rows_per_batch: int = 128


@dataclass(frozen=True)
class SoundnessSettings:
    """How many (image, R_F) pairs per method and encoder, and the classifier attack's size."""

    pairs: int = 1000  # per method and encoder
    crown_pairs: int = 8  # full CROWN costs seconds per bound evaluation: fewer pairs
    methods: tuple[str, ...] = METHODS
    rf_low: float = 0.03  # R_F drawn log-uniformly in [rf_low, rf_high] × S (feature spread)
    rf_high: float = 1.0
    classifier_images: int = 200
    classifier_train_images: int = 5000
    classifier_method: str = "auto"  # F2IPerturb method turning the BC R_F into an image radius
    semantic_pairs: int = 40  # per kind and encoder: certified brightness / contrast ranges (AUTO)
    semantic_grid: int = 2001  # parameter values checked per pair, then a bounded refinement at the best
    attack: AttackSettings = field(default_factory=AttackSettings)
    seed: int = 0


def make_pairs(
    num_pairs: int, num_images: int, spread: float, rf_low: float, rf_high: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image row [P], R_F [P], clip [P]): images cycled, R_F log-uniform in S units, clip alternating."""
    rng = np.random.default_rng(seed)
    rows = np.arange(num_pairs) % num_images
    rf = spread * np.exp(rng.uniform(np.log(rf_low), np.log(rf_high), size=num_pairs))
    clip = (np.arange(num_pairs) // num_images + np.arange(num_pairs)) % 2 == 1
    return rows, rf, clip


def attack_feature_shift(
    engine, served: Served, images: np.ndarray, radius: np.ndarray, clip: np.ndarray, settings: AttackSettings
) -> dict[str, np.ndarray]:
    """Largest feature shift [B] PGD finds within each radius: float64 bound graph, float32 as served."""
    out = {"shift_f64": np.zeros(len(radius)), "shift_ort": np.zeros(len(radius))}
    live = np.flatnonzero(radius > 0)
    for s in range(0, len(live), settings.rows_per_batch):
        rows = live[s : s + settings.rows_per_batch]
        x = torch.as_tensor(images[rows], dtype=torch.float32)
        f0 = engine.graph.forward(x).detach()

        def shift(points: torch.Tensor, f0=f0) -> torch.Tensor:
            return (engine.graph.forward(points) - f0).norm(dim=1)

        r, box = torch.as_tensor(radius[rows]), torch.as_tensor(clip[rows])
        delta = pgd_ascent(shift, x, r, settings, settings.generator(), box=box).delta
        x64 = x.double()
        # re-project in float64 so rounding never puts the verified point outside the certified ball
        d64 = project(delta.double(), x64, r, "l2", box)
        with torch.no_grad():
            out["shift_f64"][rows] = (engine.graph.forward(x64 + d64) - engine.graph.forward(x64)).norm(dim=1)
        adv = (x64 + d64).numpy().astype(np.float32)
        clean = served(images[rows].astype(np.float32)).astype(np.float64)
        out["shift_ort"][rows] = np.linalg.norm(served(adv).astype(np.float64) - clean, axis=1)
    return out


def certified_radii(
    engine, images: np.ndarray, rf: np.ndarray, clip: np.ndarray, method: str, chunk: int
) -> np.ndarray:
    """The engine's verified ℓ2 radius [P] for each (image, R_F, clip) row."""
    radii = np.zeros(len(rf))
    for flag in (False, True):
        rows = np.flatnonzero(clip == flag)
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            result = engine.image_radius(
                images[part], rf[part], norm="l2", method=method, clip_to_pixel_box=bool(flag)
            )
            radii[part] = result.image_radius
    return radii


def summarize_pairs(rf: np.ndarray, radius: np.ndarray, shifts: dict[str, np.ndarray]) -> dict:
    """Violations (shift ≥ R_F in either arithmetic) and attack reach (shift / R_F) of attacked pairs."""
    worst = np.maximum(shifts["shift_f64"], shifts["shift_ort"])
    live = radius > 0
    reach = worst[live] / rf[live] if live.any() else np.zeros(0)
    return {
        "pairs": int(len(rf)),
        "zero_radius": int((~live).sum()),
        "violations": int(np.sum(worst >= rf)),
        "attack_reach": float(reach.max()) if reach.size else 0.0,
        "attack_reach_median": float(np.median(reach)) if reach.size else 0.0,
        "radius_median": float(np.median(radius)) if len(radius) else 0.0,
    }


def encoder_soundness(
    engine, served: Served, images: np.ndarray, spread: float, settings: SoundnessSettings,
    log: Callable[[str], None] = print,
) -> dict:
    """Per-method pairs, violations and reach for one encoder (images: the test subset [N, 1, 28, 28])."""
    report = {}
    for method in settings.methods:
        count = settings.crown_pairs if method == "crown" else settings.pairs
        rows, rf, clip = make_pairs(
            count,
            len(images),
            spread,
            settings.rf_low,
            settings.rf_high,
            settings.seed + METHODS.index(method),
        )
        started = time.perf_counter()
        chunk = {"crown": 1, "lipschitz": 1024}.get(method, 16)
        radius = certified_radii(engine, images[rows], rf, clip, method, chunk)
        bound_s = time.perf_counter() - started
        shifts = attack_feature_shift(engine, served, images[rows], radius, clip, settings.attack)
        row = summarize_pairs(rf, radius, shifts)
        row.update(
            {
                "clip_pairs": int(clip.sum()),
                "bound_seconds": round(bound_s, 2),
                "attack_seconds": round(time.perf_counter() - started - bound_s, 2),
            }
        )
        report[method] = row
        log(
            f"  {method:<10} pairs {row['pairs']:>5}  violations {row['violations']}  "
            f"reach max {row['attack_reach']:.3f} median {row['attack_reach_median']:.3f}  "
            f"bounds {bound_s:.1f} s  attack {row['attack_seconds']:.1f} s"
        )
    return report


def _shifts_along(
    engine, served: Served, x0: np.ndarray, direction: np.ndarray, thetas: np.ndarray
) -> np.ndarray:
    """max(float64 graph, float32 served) of ‖f(x0 + θ·A) − f(x0)‖₂ [M] for parameters θ [M] (unclipped)."""
    x64 = torch.as_tensor(x0[None], dtype=torch.float64)
    points = x64 + torch.as_tensor(thetas, dtype=torch.float64).reshape(-1, 1, 1, 1) * torch.as_tensor(
        direction[None], dtype=torch.float64)
    with torch.no_grad():
        exact = (engine.graph.forward(points) - engine.graph.forward(x64)).norm(dim=1).numpy()
    clean = served(x0[None].astype(np.float32)).astype(np.float64)
    moved = served(points.numpy().astype(np.float32)).astype(np.float64)
    served = np.linalg.norm(moved - clean, axis=1)
    return np.maximum(exact, served)


def semantic_soundness(
    engine,
    served: Served,
    images: np.ndarray,
    spread: float,
    settings: SoundnessSettings,
    log: Callable[[str], None] = print,
    certify: Callable[[np.ndarray, np.ndarray, str], np.ndarray] | None = None,
) -> dict:
    """Brightness / contrast certificates against a dense parameter grid plus a scalar refinement.

    ``certify(images, R_F, kind) -> ranges`` defaults to the semantic certifier's AUTO.
    """
    from scipy.optimize import minimize_scalar

    if certify is None:
        from services.perturb.semantic import SemanticCertifier

        certifier = SemanticCertifier(engine)

        def certify(x, rf, kind):
            return certifier.certify(x, rf, kind).parameter_radius

    report = {}
    for k, kind in enumerate(SEMANTIC_KINDS):
        rows, rf, _ = make_pairs(settings.semantic_pairs, len(images), spread, settings.rf_low,
                                 settings.rf_high, settings.seed + 100 + k)
        started = time.perf_counter()
        ranges = np.concatenate([certify(images[rows[s : s + 8]], rf[s : s + 8], kind)
                                 for s in range(0, len(rows), 8)]) if len(rows) else np.zeros(0)
        bound_s = time.perf_counter() - started
        worst = np.zeros(len(rows))
        for p, (row, t) in enumerate(zip(rows, ranges, strict=True)):
            if t <= 0:
                continue
            x0 = images[row].astype(np.float64)
            direction = np.ones_like(x0) if kind == "brightness" else x0
            t = min(float(t), 1e3)  # a black image's contrast range is unbounded: check a finite part
            grid = np.linspace(-t, t, settings.semantic_grid)
            shifts = _shifts_along(engine, served, x0, direction, grid)
            best, step = grid[int(np.argmax(shifts))], 2 * t / max(settings.semantic_grid - 1, 1)
            refined = minimize_scalar(lambda th, x0=x0, d=direction: -_shifts_along(engine, served, x0, d,
                                                                                     [th])[0],
                                      bounds=(max(-t, best - step), min(t, best + step)), method="bounded")
            worst[p] = max(float(shifts.max()), -float(refined.fun))
        row = summarize_pairs(rf, ranges, {"shift_f64": worst, "shift_ort": worst})
        row.update(bound_seconds=round(bound_s, 2),
                   attack_seconds=round(time.perf_counter() - started - bound_s, 2),
                   range_median=row.pop("radius_median"))
        report[kind] = row
        log(f"  semantic {kind:<10} pairs {row['pairs']:>4}  violations {row['violations']}  "
            f"reach max {row['attack_reach']:.3f} median {row['attack_reach_median']:.3f}  "
            f"bounds {bound_s:.1f} s")
    return report


def classifier_soundness(
    engine,
    served: Served,
    images: np.ndarray,
    test_labels: np.ndarray,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    settings: SoundnessSettings,
    log: Callable[[str], None] = print,
) -> dict:
    """Attack g∘f inside the image radius of the client's BC (CROWN) radius R_F; any flip is a violation."""
    from edge_client.base_certify import BCConfig, certify_feature_radius
    from edge_client.training import TrainConfig, train_mlp

    started = time.perf_counter()
    features = served(train_images)
    mlp = train_mlp(
        features,
        train_labels,
        TrainConfig(hidden_widths=(64,), epochs=8, noise_c=0.25, seed=settings.seed),
        num_classes=10,
    )
    test_features = served(images)
    predictions, rf = certify_feature_radius(mlp, test_features, BCConfig(method="crown"))
    live = np.flatnonzero(rf > 0)
    radius = np.zeros(len(rf))
    if live.size:
        radius[live] = certified_radii(
            engine, images[live], rf[live], np.zeros(live.size, bool), settings.classifier_method, 16
        )
    layers = [
        (torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))
        for w, b in mlp.folded_layers(np.float64)
    ]

    def logits(points: torch.Tensor) -> torch.Tensor:
        hidden = engine.graph.forward(points)
        for i, (w, b) in enumerate(layers):
            hidden = hidden @ w.T + b
            hidden = torch.relu(hidden) if i < len(layers) - 1 else hidden
        return hidden

    margins = np.full(len(rf), -np.inf)  # attacked max_j≠y g_j − g_y (≥ 0 is a flip)
    attacked = np.flatnonzero(radius > 0)
    for s in range(0, len(attacked), settings.attack.rows_per_batch):
        rows = attacked[s : s + settings.attack.rows_per_batch]
        x = torch.as_tensor(images[rows])
        y = torch.as_tensor(predictions[rows])

        def flip_margin(points: torch.Tensor, y=y) -> torch.Tensor:
            z = logits(points)
            own = z.gather(1, y[:, None])[:, 0]
            mask = torch.nn.functional.one_hot(y, z.shape[1]).bool()
            return z.masked_fill(mask, -torch.inf).max(dim=1).values - own

        attack = settings.attack
        r = torch.as_tensor(radius[rows])
        delta = pgd_ascent(flip_margin, x, r, attack, attack.generator(), box=False).delta
        d64 = project(delta.double(), x.double(), r, "l2", False)
        z = mlp.logits(served((x.double() + d64).numpy().astype(np.float32)))  # served f, float32
        own = z[np.arange(len(rows)), predictions[rows]].copy()
        z[np.arange(len(rows)), predictions[rows]] = -np.inf
        margins[rows] = z.max(axis=1) - own
    report = {
        "images": int(len(rf)),
        "certified": int(live.size),
        "attacked": int(attacked.size),
        "violations": int(np.sum(margins[attacked] >= 0)),
        "clean_accuracy": float(np.mean(predictions == test_labels)),
        "bc_method": "crown",
        "image_radius_method": settings.classifier_method,
        "feature_radius_median": float(np.median(rf[live])) if live.size else 0.0,
        "image_radius_median": float(np.median(radius[attacked])) if attacked.size else 0.0,
        "closest_margin": float(margins[attacked].max()) if attacked.size else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log(
        f"  g∘f: {report['attacked']} attacked of {report['images']}, violations {report['violations']}, "
        f"closest margin {report['closest_margin']}"
    )
    return report


def run(models: list[Path], settings: SoundnessSettings, log: Callable[[str], None] = print) -> dict:
    """Soundness figures for every encoder: per method, and for the full classifier."""
    from reaas.datasets import load_fashion_mnist
    from reliability.common import evaluation_images
    from services.encoder.onnx_model import OnnxEncoder
    from services.perturb.engine import BoundEngine

    count = min(500, max(settings.pairs, settings.classifier_images, 1))
    _, images, labels = evaluation_images(count)
    train_images, train_labels = load_fashion_mnist("train")
    n_train = settings.classifier_train_images
    report: dict = {"settings": asdict(settings), "encoders": {}}
    for path in models:
        engine = BoundEngine.from_onnx(path)
        served = OnnxEncoder(Path(path), intra_op_threads=1).run
        spread = feature_spread(served(train_images[:2000]))
        log(
            f"soundness {Path(path).name}: feature spread S = {spread:.4g}, "
            f"L = {engine.lipschitz_bound_l2:.4g}"
        )
        entry = {
            "feature_spread": spread,
            "lipschitz_bound_l2": engine.lipschitz_bound_l2,
            "methods": encoder_soundness(engine, served, images, spread, settings, log),
        }
        if settings.semantic_pairs > 0:
            entry["semantic"] = semantic_soundness(engine, served, images, spread, settings, log)
        if settings.classifier_images > 0:
            entry["classifier"] = classifier_soundness(
                engine,
                served,
                images[: settings.classifier_images],
                labels[: settings.classifier_images],
                train_images[:n_train],
                train_labels[:n_train],
                settings,
                log,
            )
        report["encoders"][Path(path).name] = entry
    rows = [m for e in report["encoders"].values() for m in (*e["methods"].values(),
                                                              *e.get("semantic", {}).values())]
    classifier = [e["classifier"] for e in report["encoders"].values() if "classifier" in e]
    report["soundness_violations"] = sum(r["violations"] for r in rows)
    report["classifier_violations"] = sum(c["violations"] for c in classifier)
    report["attack_reach"] = max((r["attack_reach"] for r in rows), default=0.0)
    report["pairs"] = sum(r["pairs"] for r in rows)
    return report
