"""SynBench: a task-agnostic robustness–accuracy score of an encoder from synthetic Gaussian-mixture data.

Seed 004 (Ko et al., SynBench) compares the robustness–accuracy trade-off of a representation on
class-conditional Gaussian mixture data with the theoretical optimum of the raw data, as a ratio of
areas under the curves. Our faithful simplification *(our choice)*:

* Data, per separation ``s`` (a grid): ``x = clip(0.5·1 + y·s·u + σ·n, 0, 1)``, ``y = ±1``, ``u`` a fixed
  seeded unit direction in image space, ``n ~ N(0, I)``: two classes whose means are ``2s`` apart (ℓ2).
* Reference (raw data, closed form): the ℓ2-ε-robust Bayes-optimal accuracy of the isotropic mixture is
  ``a_ref(ε) = Φ((s − ε)/σ)``.
* Representation: Fisher's linear discriminant ``w`` on ``z = f(x)`` (fit on one half, scored on the
  other); a test point's certified *input-space* radius is ``margin / (‖w‖₂ · L)`` with ``L`` the encoder's
  certified ℓ2 Lipschitz bound (the conversion F2IPerturb's Lipschitz method uses), so ``a_rep(ε)`` is a
  sound lower bound of the probe's robust accuracy — the same ℓ2 units as ACR.
* Area: ``AUC(s) = ∫₀^∞ (a(ε) − a_t)⁺ dε`` (accuracy above the threshold ``a_t`` integrated over ε);
  score = ``Σ_s AUC_rep(s) / Σ_s AUC_ref(s)`` in [0, ~1]; 1 means the representation keeps the raw
  data's optimal trade-off, 0 that nothing is certified above ``a_t``.

``python -m services.trainer.synbench --model models/fmnist-robust.onnx --json [--write-card]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm as _normal

# features(images [N, C, H, W] float32 in [0, 1]) -> [N, D]
FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SynBenchConfig:
    """Synthetic-data and score parameters (stored with the score in the model card)."""

    separations: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)  # s: ℓ2 half-distance of means
    noise_std: float = 0.1  # σ per pixel
    samples_per_class: int = 500  # per separation, half for fitting the probe, half for scoring
    threshold_accuracy: float = 0.7  # a_t
    shrinkage: float = 1e-3  # ridge added to the feature covariance, relative to its mean eigenvalue
    seed: int = 0


def _antiderivative_phi(u: np.ndarray | float) -> np.ndarray:
    """G(u) = u·Φ(u) + φ(u), so that G' = Φ."""
    return u * _normal.cdf(u) + _normal.pdf(u)


def reference_auc(separation: float, noise_std: float, threshold_accuracy: float) -> float:
    """∫₀^∞ (Φ((s − ε)/σ) − a_t)⁺ dε: the area of the raw mixture's optimal robust-accuracy curve."""
    u_t = float(_normal.ppf(threshold_accuracy))
    eps_max = separation - noise_std * u_t  # where Φ((s − ε)/σ) = a_t
    if eps_max <= 0:
        return 0.0
    integral = noise_std * (_antiderivative_phi(separation / noise_std) - _antiderivative_phi(u_t))
    return float(integral - threshold_accuracy * eps_max)


def empirical_auc(radii: np.ndarray, threshold_accuracy: float) -> float:
    """∫₀^∞ (a(ε) − a_t)⁺ dε for a(ε) = mean(radii > ε); radii [N] ≥ 0 (0 for a wrong prediction)."""
    r = np.sort(np.asarray(radii, dtype=np.float64))[::-1]
    n = r.size
    if n == 0:
        return 0.0
    nxt = np.append(r[1:], 0.0)
    acc = np.arange(1, n + 1) / n  # a(ε) = k/n on [r_(k+1), r_(k))
    return float(np.sum(np.clip(acc - threshold_accuracy, 0.0, None) * (r - nxt)))


def fisher_direction(z: np.ndarray, y: np.ndarray, shrinkage: float) -> tuple[np.ndarray, float]:
    """Fisher discriminant (w [D], b) for labels ±1 on features z [N, D]: w = Σ⁻¹(μ₊ − μ₋)."""
    pos, neg = z[y > 0], z[y < 0]
    mu_p, mu_n = pos.mean(0), neg.mean(0)
    centered = np.concatenate([pos - mu_p, neg - mu_n])
    cov = centered.T @ centered / max(1, len(centered) - 2)
    ridge = shrinkage * max(float(np.trace(cov)) / cov.shape[0], 1e-30)
    w = np.linalg.solve(cov + ridge * np.eye(cov.shape[0]), mu_p - mu_n)
    return w, float(-w @ (mu_p + mu_n) / 2)


def certified_radii(
    w: np.ndarray, b: float, z: np.ndarray, y: np.ndarray, lipschitz: float
) -> np.ndarray:
    """Input-space ℓ2 radii [N] of sign(w·f(x) + b): y·(w·z + b) / (‖w‖₂ · L), 0 where wrong."""
    margin = y * (z @ w + b)
    scale = float(np.linalg.norm(w)) * lipschitz
    if scale <= 0:
        return np.where(margin > 0, np.inf, 0.0)
    return np.clip(margin / scale, 0.0, None)


def unit_direction(shape: Sequence[int], seed: int) -> np.ndarray:
    """A fixed seeded unit vector u of the image shape (float64)."""
    u = np.random.default_rng(seed).standard_normal(tuple(shape))
    return u / np.linalg.norm(u)


def synthetic_mixture(
    direction: np.ndarray, separation: float, noise_std: float, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """(images [2n, *shape] float32 in [0, 1], labels [2n] ±1, fraction of clipped pixels)."""
    y = np.repeat([1.0, -1.0], per_class)
    x = 0.5 + y.reshape(-1, *([1] * direction.ndim)) * separation * direction
    x = x + noise_std * rng.standard_normal(x.shape)
    clipped = float(np.mean((x < 0) | (x > 1)))
    return np.clip(x, 0.0, 1.0).astype(np.float32), y, clipped


def synbench_score(
    features: FeatureFn, input_shape: Sequence[int], lipschitz: float, cfg: SynBenchConfig = SynBenchConfig()
) -> dict:
    """SynBench score of an encoder ``features`` with certified ℓ2 Lipschitz bound ``lipschitz``."""
    if not lipschitz > 0:
        raise ValueError(f"lipschitz must be > 0, got {lipschitz!r}")
    rng = np.random.default_rng(cfg.seed)
    direction = unit_direction(input_shape, cfg.seed)
    half = cfg.samples_per_class // 2
    rows = []
    for s in cfg.separations:
        images, y, clipped = synthetic_mixture(direction, s, cfg.noise_std, cfg.samples_per_class, rng)
        z = np.asarray(features(images), dtype=np.float64)
        fit = np.r_[0:half, cfg.samples_per_class : cfg.samples_per_class + half]
        test = np.setdiff1d(np.arange(len(y)), fit)
        w, b = fisher_direction(z[fit], y[fit], cfg.shrinkage)
        radii = certified_radii(w, b, z[test], y[test], lipschitz)
        rows.append(
            {
                "separation": s,
                "clean_accuracy": float(np.mean(radii > 0)),
                "reference_clean_accuracy": float(_normal.cdf(s / cfg.noise_std)),
                "auc": empirical_auc(radii, cfg.threshold_accuracy),
                "reference_auc": reference_auc(s, cfg.noise_std, cfg.threshold_accuracy),
                "clipped_fraction": clipped,
            }
        )
    total_ref = sum(r["reference_auc"] for r in rows)
    score = sum(r["auc"] for r in rows) / total_ref if total_ref > 0 else 0.0
    return {"synbench_score": float(score), "lipschitz_bound_l2": float(lipschitz), "per_separation": rows}


def onnx_feature_fn(path: str) -> FeatureFn:
    """features(images) of an ONNX encoder via onnxruntime, one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        chunks = [session.run(None, {name: images[i : i + 256]})[0] for i in range(0, len(images), 256)]
        return np.concatenate(chunks)

    return run


def _verified_lipschitz(model: Path) -> float:
    """The bound engine's certified Lip_2 of the served model (never a model card's claim)."""
    from services.trainer.probe import certified_lipschitz

    return certified_lipschitz(str(model))[0]


def build_parser() -> argparse.ArgumentParser:
    """CLI options; every default is SynBenchConfig's."""
    d = SynBenchConfig()
    p = argparse.ArgumentParser(
        prog="python -m services.trainer.synbench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="ONNX encoder")
    p.add_argument("--lipschitz", type=float, default=0.0, help="certified Lip_2; 0 = the bound engine's")
    p.add_argument("--separations", type=float, nargs="+", default=list(d.separations))
    p.add_argument("--noise-std", type=float, default=d.noise_std)
    p.add_argument("--samples-per-class", type=int, default=d.samples_per_class)
    p.add_argument("--threshold-accuracy", type=float, default=d.threshold_accuracy)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--write-card", action="store_true", help="store score and parameters in <model>.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, score, print, optionally write the card."""
    args = build_parser().parse_args(argv)
    model = Path(args.model)
    cfg = SynBenchConfig(
        separations=tuple(args.separations),
        noise_std=args.noise_std,
        samples_per_class=args.samples_per_class,
        threshold_accuracy=args.threshold_accuracy,
        seed=args.seed,
    )
    lipschitz = args.lipschitz or _verified_lipschitz(model)
    features = onnx_feature_fn(str(model))
    shape = [int(v) for v in _input_shape(str(model))]
    result = {"model": str(model), **synbench_score(features, shape, lipschitz, cfg), "config": asdict(cfg)}
    if args.write_card:
        card_path = model.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card["synbench_score"] = result["synbench_score"]
        card["synbench"] = {"lipschitz_bound_l2": lipschitz, **asdict(cfg)}
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(result) if args.json else f"{model}: SynBench score {result['synbench_score']:.4f}")
    return 0


def _input_shape(path: str) -> list[int]:
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[1:]
    return [d.dim_value for d in dims]


if __name__ == "__main__":
    sys.exit(main())
