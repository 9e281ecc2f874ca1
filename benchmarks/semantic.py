"""Semantic certificates vs the ℓ2 conversion on Fashion-MNIST test images, printed as JSON.

``python -m benchmarks.semantic --models models/fmnist-robust.onnx models/fmnist-standard.onnx``

Per encoder and kind: the certified B (or C) per image, the ℓ2-implied value R/√d (or R/‖x‖₂) with R
the engine's AUTO ℓ2 radius (unclipped), and their ratio. R_F = ``feature_radius_factor`` × the
card's feature spread, the same for every image (a typical client-certified feature radius).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from services.common.model_file import load_model_file
from services.perturb.engine import BoundEngine
from services.perturb.semantic.certify import SemanticCertifier
from services.perturb.semantic.sp_layer import basis, l2_per_unit


def l2_implied(radius: np.ndarray, images: np.ndarray, kind: str) -> np.ndarray:
    """Parameter radius [B] the ℓ2 radii R [B] imply for ``kind`` (R / max‖Aθ‖ over the unit box)."""
    return np.array([r / l2_per_unit(basis(x, kind)) for r, x in zip(radius, images, strict=True)])


def bench_model(path: str, images: np.ndarray, kinds: list[str], factor: float, combined_images: int,
                tolerance: float) -> dict:
    """One encoder's semantic certificates and ℓ2 conversions for ``images`` [N, 1, 28, 28]."""
    model = load_model_file(path)
    engine = BoundEngine.from_onnx(path)
    rf_value = factor * (model.feature_spread or 1.0)
    out = {"model": path, "feature_radius": rf_value, "kinds": {}}
    cert = SemanticCertifier(engine)
    for kind in kinds:
        x = images[:combined_images] if kind == "brightness_contrast" else images
        rf = np.full(len(x), rf_value)
        start = time.monotonic()
        radius = engine.image_radius(
            x, rf, method="auto", relative_tolerance=tolerance, clip_to_pixel_box=False
        )
        l2_s = time.monotonic() - start
        start = time.monotonic()
        res = cert.certify(x, rf, kind, relative_tolerance=tolerance)
        implied = l2_implied(radius.image_radius, x, kind)
        ratio = res.parameter_radius / np.maximum(implied, 1e-300)
        out["kinds"][kind] = {
            "images": len(x),
            "semantic_mean": float(res.parameter_radius.mean()),
            "semantic_median": float(np.median(res.parameter_radius)),
            "l2_implied_mean": float(implied.mean()),
            "l2_radius_mean": float(radius.image_radius.mean()),
            "ratio_median": float(np.median(ratio)),
            "ratio_min": float(ratio.min()),
            "semantic_at_least_l2_implied": bool(np.all(res.parameter_radius >= implied)),
            "methods_used": sorted(set(res.method_used)),
            "semantic_seconds": round(time.monotonic() - start, 1),
            "l2_seconds": round(l2_s, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, load the test subset, bench every model, print JSON."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.semantic", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--models", nargs="+", default=["models/fmnist-robust.onnx", "models/fmnist-standard.onnx"]
    )
    p.add_argument("--images", type=int, default=20, help="prefix of the test subset (index ≡ 0 mod 20)")
    p.add_argument("--combined-images", type=int, default=5, help="images for brightness_contrast (slower)")
    p.add_argument("--kinds", nargs="+", default=["brightness", "contrast", "brightness_contrast"])
    p.add_argument("--feature-radius-factor", type=float, default=0.25, help="R_F = factor × feature spread")
    p.add_argument("--relative-tolerance", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from reaas.datasets import evaluation_subset_indices, load_fashion_mnist

    test_images, _ = load_fashion_mnist("test")
    x = test_images[evaluation_subset_indices(args.images, total=len(test_images))]
    factor, tol = args.feature_radius_factor, args.relative_tolerance
    results = [bench_model(m, x, args.kinds, factor, args.combined_images, tol) for m in args.models]
    command = "python -m benchmarks.semantic " + " ".join(argv or sys.argv[1:])
    print(json.dumps({"command": command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
