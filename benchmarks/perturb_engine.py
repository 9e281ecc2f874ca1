"""In-process benchmark of the bound engine: latency, radii, certificate gap and memory per method.

``python -m benchmarks.perturb_engine --model PATH --json``; without ``--model`` it benchmarks an untrained
encoder of the planned shape. Images: the Fashion-MNIST test images whose index is ≡ 0 (mod 20), in order.
Features are served as the Feature-API serves them (``OnnxEncoder``: float32 ONNX Runtime).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edge_client.mlp import feature_spread
from services.encoder.onnx_model import OnnxEncoder
from services.perturb.engine import BoundEngine
from services.trainer.pgd import AttackConfig, pgd_feature_shift


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; defaults follow issue 3's "Measure it"."""

    model: str | None = None
    images: int = 100
    methods: tuple[str, ...] = ("lipschitz", "local_lipschitz", "ibp", "crown_ibp", "auto", "crown")
    crown_images: int = 3  # full CROWN costs seconds per query: time a prefix only
    gap_images: int = 20
    rss_images: int = 32
    radius_fraction: float = 0.5  # R_F = fraction x feature RMS spread
    attack_steps: int = 100
    attack_restarts: int = 5
    threads: int = 1
    seed: int = 0
    grpc_methods: tuple[str, ...] = ()  # also time these served over gRPC against in-process (--grpc)
    grpc_requests: int = 20


def _untrained_model(directory: Path, seed: int) -> Path:
    """The trainer's default encoder shape, untrained, as ONNX in ``directory``."""
    from reaas.onnx_export import torch_to_onnx
    from services.trainer.encoders import untrained_encoder

    path = directory / "untrained.onnx"
    path.write_bytes(torch_to_onnx(untrained_encoder(seed=seed), (1, 28, 28)))
    return path


def _test_images(n: int) -> np.ndarray:
    from reaas.datasets import evaluation_subset_indices, load_fashion_mnist

    images, _ = load_fashion_mnist(split="test")
    return np.ascontiguousarray(images[evaluation_subset_indices(n, total=len(images))])


def attack_limited_radius(
    eng: BoundEngine, x: np.ndarray, rf: np.ndarray, start: np.ndarray, cfg: AttackConfig, rounds: int = 10
) -> np.ndarray:
    """Smallest r [B] found at which PGD moves the feature by ≥ R_F (an upper bound on any sound radius)."""
    graph = eng.graph.to(torch.float32)
    xt = torch.as_tensor(x)

    def reaches(r: np.ndarray) -> np.ndarray:
        shift = pgd_feature_shift(graph.forward, xt, torch.as_tensor(r, dtype=torch.float32), "l2", True, cfg)
        return shift.numpy() >= rf

    lo = np.maximum(start, 1e-6)
    hi = np.full_like(lo, np.inf)
    r = lo * 1.5
    for _ in range(40):  # expand until the attack succeeds everywhere
        ok = reaches(r)
        hi = np.where(ok & np.isinf(hi), r, hi)
        if np.all(np.isfinite(hi)):
            break
        r = np.where(np.isinf(hi), r * 1.5, r)
        lo = np.where(np.isinf(hi), r / 1.5, lo)
    for _ in range(rounds):
        mid = np.sqrt(lo * hi)
        ok = reaches(mid)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def largest_jacobian_norm(forward: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> float:
    """max over images x [B, ...] of ‖∂f/∂x‖₂ (largest singular value of the float64 Jacobian at x).

    Each is the local Lipschitz constant at a sampled point, so the maximum is a *lower* bound on the
    global one: set beside the certified bound it shows how much slack the certificate has left.
    """
    best = 0.0
    for image in torch.as_tensor(x, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: forward(v[None])[0], image)
        best = max(best, float(torch.linalg.matrix_norm(jacobian.reshape(jacobian.shape[0], -1), ord=2)))
    return best


def run(cfg: BenchConfig) -> dict:
    """Run every measurement and return the JSON-ready report."""
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="perturb-bench-") as scratch:
        return _measure(cfg, Path(cfg.model) if cfg.model else _untrained_model(Path(scratch), cfg.seed))


def _measure(cfg: BenchConfig, model: Path) -> dict:
    eng = BoundEngine.from_onnx(model)
    served = OnnxEncoder(model, intra_op_threads=cfg.threads).run
    x = _test_images(cfg.images)
    spread = feature_spread(served(x))
    rf = np.full(len(x), cfg.radius_fraction * spread)
    report: dict = {
        "model": cfg.model or "untrained (services.trainer.encoders default shape)",
        "images": len(x),
        "feature_rms_spread": spread,
        "feature_radius": float(rf[0]),
        "lipschitz_bound_l2": eng.lipschitz_bound_l2,
        "torch_threads": cfg.threads,
        "methods": {},
    }
    report["float_margin"] = float_margin_cost(eng, served, x, rf)
    print(f"[bench] float margin: {report['float_margin']}", file=sys.stderr, flush=True)
    auto_radius = None
    for m in cfg.methods:
        n = cfg.crown_images if m == "crown" else len(x)
        times, radii, evals, used = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            res = eng.image_radius(x[i : i + 1], rf[i : i + 1], method=m)
            times.append((time.perf_counter() - t0) * 1e3)
            radii.append(float(res.image_radius[0]))
            evals.append(res.bound_evaluations)
            used.extend(res.method_used)
        report["methods"][m] = {
            "queries": n,
            "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)),
            "mean_image_radius": float(np.mean(radii)),
            "mean_bound_evaluations": float(np.mean(evals)),
            "method_used": {u: used.count(u) for u in sorted(set(used))},
        }
        print(f"[bench] {m}: {report['methods'][m]}", file=sys.stderr, flush=True)
        if m == "auto":
            auto_radius = np.array(radii)
    if auto_radius is not None and cfg.gap_images:
        g = min(cfg.gap_images, len(x))
        acfg = AttackConfig(steps=cfg.attack_steps, restarts=cfg.attack_restarts, seed=cfg.seed)
        attack = attack_limited_radius(eng, x[:g], rf[:g], auto_radius[:g], acfg)
        report["certificate_gap_median"] = float(np.median(attack / np.maximum(auto_radius[:g], 1e-300)))
        report["attack_radius_mean"] = float(attack.mean())
    if cfg.gap_images:
        lower = largest_jacobian_norm(eng.graph.to(torch.float64).forward, x[: min(cfg.gap_images, len(x))])
        report["lipschitz_sampled_lower"] = lower  # the largest Jacobian norm found: certified / this ≥ 1
        report["lipschitz_bound_over_sampled"] = eng.lipschitz_bound_l2 / max(lower, 1e-300)
    if cfg.rss_images:
        k = min(cfg.rss_images, len(x))
        t0 = time.perf_counter()
        eng.curve(
            x[:k],
            np.array([float(np.median(auto_radius if auto_radius is not None else [1e-2]))]),
            method="crown",
        )
        report["crown_batch_seconds"] = time.perf_counter() - t0
        report["crown_batch_images"] = k
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if cfg.grpc_methods:
        report["served"] = served_latencies(cfg, model, x, rf)
    report["config"] = asdict(cfg)
    return report


def float_margin_cost(
    eng: BoundEngine, served: Callable[[np.ndarray], np.ndarray], x: np.ndarray, rf: np.ndarray
) -> dict:
    """LIPSCHITZ radii under the proven float32 margin against the old guessed one, 1e-5·(1 + ‖f(x)‖₂)."""
    new = eng.image_radius(x, rf, method="lipschitz").image_radius
    l_eff = eng._l_eff("l2") * (1 + eng.config.shift_margin_relative)
    f_norm = np.linalg.norm(served(x).astype(np.float64), axis=1)
    old = np.maximum(rf - 1e-5 * (1 + f_norm), 0.0) / l_eff
    margin = eng.served_error(x, old, clip=True)
    ok = old > 0
    return {
        "format": eng.float_error.format.name,
        "margin_median": float(np.median(margin)),
        "margin_over_feature_radius_median": float(np.median(margin / rf)),
        "lipschitz_radius_old_margin_mean": float(old.mean()),
        "lipschitz_radius_new_margin_mean": float(new.mean()),
        "lipschitz_radius_loss_median": float(np.median(1 - new[ok] / old[ok])) if ok.any() else None,
    }


def served_latencies(cfg: BenchConfig, model: Path, x: np.ndarray, rf: np.ndarray) -> dict:
    """Served F2IPerturb p50 against in-process, per method, on the first ``grpc_requests`` images."""
    from benchmarks.perturb_served import measure_served_latency

    n = min(cfg.grpc_requests, len(x))
    out = {}
    for m in cfg.grpc_methods:
        out[m] = measure_served_latency(model, x[:n], rf[:n], method=m, threads=cfg.threads)
        print(f"[bench] served {m}: {out[m]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="ONNX encoder (default: untrained, planned shape)")
    p.add_argument("--images", type=int, default=d.images)
    p.add_argument("--methods", default=",".join(d.methods))
    p.add_argument("--crown-images", type=int, default=d.crown_images)
    p.add_argument("--gap-images", type=int, default=d.gap_images)
    p.add_argument("--rss-images", type=int, default=d.rss_images)
    p.add_argument("--radius-fraction", type=float, default=d.radius_fraction)
    p.add_argument("--attack-steps", type=int, default=d.attack_steps)
    p.add_argument("--attack-restarts", type=int, default=d.attack_restarts)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--grpc", action="store_true",
                   help="also time F2IPerturb served over gRPC on loopback against in-process (goal <= 1.2x)")
    p.add_argument("--grpc-methods", default="lipschitz,crown_ibp,auto", help="methods timed with --grpc")
    p.add_argument("--grpc-requests", type=int, default=d.grpc_requests, help="requests (1 image) per method")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    cfg = BenchConfig(
        a.model,
        a.images,
        tuple(m for m in a.methods.split(",") if m),
        a.crown_images,
        a.gap_images,
        a.rss_images,
        a.radius_fraction,
        a.attack_steps,
        a.attack_restarts,
        a.threads,
        a.seed,
        tuple(m for m in a.grpc_methods.split(",") if m) if a.grpc else (),
        a.grpc_requests,
    )
    report = run(cfg)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        for m, r in report["methods"].items():
            print(
                f"{m:10s} p50 {r['p50_ms']:9.2f} ms  p95 {r['p95_ms']:9.2f} ms  "
                f"radius {r['mean_image_radius']:.5f}"
            )
        print({k: v for k, v in report.items() if k not in ("methods", "config")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
