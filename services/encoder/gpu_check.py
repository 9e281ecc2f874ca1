"""GPU numerics check: served features on every GPU provider against a float64 reference and the margin.

The certificate adds a proven bound E(x) of the served model's rounding to every feature-shift bound
(services/perturb/engine/float_error.py). That bound assumes the arithmetic the service is configured
for: float32 GEMM-style dot products, or, in the reduced mode, a 10-bit mantissa. This check runs the
encoder through every GPU execution provider ONNX Runtime offers here, with exactly the options the
Feature-API uses (services/encoder/onnx_model.py), on Fashion-MNIST images, and compares each feature
with the float64 evaluation of the same graph: any ‖f̂(x) − f(x)‖₂ above E(x) exits 1.

``python -m services.encoder.gpu_check --model models/fmnist-robust.onnx`` (``make gpu-check``). On a
machine without a GPU provider it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort
import torch

from services.encoder.onnx_model import PRECISIONS, choose_providers

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _features(session: ort.InferenceSession, images: np.ndarray, batch: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64)


def check(model: str, images: np.ndarray, batch: int = 500) -> list[dict]:
    """One row per (precision, GPU provider): largest error, largest error / margin, pass."""
    from services.perturb.engine import BoundEngine, EngineConfig

    available = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
    rows: list[dict] = []
    if not available:
        return rows
    engines = {p: BoundEngine.from_onnx(model, EngineConfig(served_format=p)) for p in PRECISIONS}
    graph = engines["float32"].graph  # the exact network: the same for every served precision
    with torch.no_grad():
        exact = np.concatenate(
            [
                graph.forward(torch.as_tensor(images[i : i + batch], dtype=torch.float64)).numpy()
                for i in range(0, len(images), batch)
            ]
        )
    for precision, engine in engines.items():
        margin = np.concatenate(
            [engine.served_point_error(images[i : i + batch]) for i in range(0, len(images), batch)]
        )
        for name, options in choose_providers(precision=precision):
            if name not in available:
                continue
            t0 = time.perf_counter()
            session = ort.InferenceSession(model, providers=[(name, options), "CPUExecutionProvider"])
            served = _features(session, images, batch)
            err = np.linalg.norm(served - exact, axis=1)
            ratio = err / np.maximum(margin, 1e-300)
            rows.append(
                {
                    "precision": precision,
                    "provider": session.get_providers()[0],
                    "options": options,
                    "images": len(images),
                    "max_error_l2": float(err.max()),
                    "median_margin_l2": float(np.median(margin)),
                    "max_error_over_margin": float(ratio.max()),
                    "passed": bool(np.all(err <= margin)),
                    "seconds": time.perf_counter() - t0,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse, check, print one line per provider; exit 1 when any error exceeds its margin."""
    p = argparse.ArgumentParser(
        prog="python -m services.encoder.gpu_check", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="models/fmnist-robust.onnx", help="ONNX encoder (default: %(default)s)")
    p.add_argument(
        "--images", type=int, default=10_000, help="Fashion-MNIST test images (default: %(default)s)"
    )
    a = p.parse_args(argv)
    if not any(g in ort.get_available_providers() for g in GPU_PROVIDERS):
        print(
            f"gpu-check: no GPU provider in this onnxruntime "
            f"({ort.get_available_providers()}): nothing to check"
        )
        return 0
    from reaas.datasets import load_fashion_mnist

    images, _ = load_fashion_mnist("test")
    rows = check(a.model, np.ascontiguousarray(images[: a.images], dtype=np.float32))
    for r in rows:
        print(
            f"{r['precision']:8s} {r['provider']:28s} max |f̂ − f| {r['max_error_l2']:.3e}  "
            f"median margin {r['median_margin_l2']:.3e}  max error/margin {r['max_error_over_margin']:.2e}  "
            f"{'PASS' if r['passed'] else 'FAIL'}  ({r['images']} images, {r['seconds']:.1f} s)"
        )
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
