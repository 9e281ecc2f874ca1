"""Linear probe and Lipschitz-to-spread figures of an ONNX encoder on Fashion-MNIST.

``python -m services.trainer.probe --model models/fmnist-robust.onnx --json``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from reaas.datasets import LOADERS
from services.trainer.data import load_images
from services.trainer.spectral import feature_spread

RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


class LinearClassifier(NamedTuple):
    """g(z) = z Wᵀ + b on raw features z [N, D]; weight [C, D], bias [C]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


@dataclass(frozen=True)
class ProbeConfig:
    """Multinomial logistic regression on standardized features, full-batch L-BFGS."""

    max_iter: int = 300
    weight_decay: float = 1e-4
    seed: int = 0


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, cfg: ProbeConfig = ProbeConfig()
) -> LinearClassifier:
    """Fit a linear classifier on features [N, D] (standardized inside, returned in raw feature units)."""
    torch.manual_seed(cfg.seed)
    feats = features.double()
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-8)
    z = (feats - mean) / std
    n_classes = int(labels.max()) + 1
    w = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1, max_iter=cfg.max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + cfg.weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / std).detach()
    return LinearClassifier(w_raw, (b - w_raw @ mean).detach())


def accuracy(clf: LinearClassifier, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of a linear classifier on features [N, D]."""
    return float((clf.logits(features.double()).argmax(1) == labels).double().mean())


def lipschitz_certified_radii(
    clf: LinearClassifier,
    features: torch.Tensor,
    labels: torch.Tensor,
    lipschitz: float,
) -> torch.Tensor:
    """Image-space ℓ2 radii [N] via f's Lipschitz bound L: min_j (s_y − s_j)/‖w_y − w_j‖ / L; 0 if wrong."""
    scores = clf.logits(features.double())
    pred = scores.argmax(1)
    w_diff = clf.weight[pred][:, None, :] - clf.weight[None, :, :]  # [N, C, D]
    margin = scores.gather(1, pred[:, None]) - scores  # [N, C]
    ratio = margin / w_diff.norm(dim=2).clamp_min(1e-12)
    ratio[torch.arange(len(pred)), pred] = float("inf")
    radius = ratio.min(dim=1).values / lipschitz
    return torch.where(pred == labels, radius, torch.zeros_like(radius))


def onnx_features(path: str | bytes, images: torch.Tensor, batch_size: int = 1024, threads: int = 2
                  ) -> torch.Tensor:
    """features [N, D] of images [N, C, H, W] from an ONNX encoder (a path or the model's bytes) via
    onnxruntime (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    chunks = [
        session.run(["features"], {"images": images[i : i + batch_size].numpy()})[0]
        for i in range(0, len(images), batch_size)
    ]
    return torch.from_numpy(np.concatenate(chunks))


def certified_lipschitz(path: str) -> tuple[float, str]:
    """(certified ℓ2 Lipschitz bound, method) of an ONNX encoder, by the bound engine: the one bound
    the services serve. An encoder the engine cannot bound raises UnsupportedModelError."""
    from services.perturb.engine import BoundEngine

    return float(BoundEngine.from_onnx(path).lipschitz_bound_l2), "bound_engine"


def probe_features(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    lipschitz: float,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """Probe figures from features: accuracy, spread (of the eval features), L/S, Lipschitz ACR."""
    clf = fit_linear_probe(train_feats, train_labels, cfg)
    spread = float(feature_spread(test_feats.double()))
    radii = lipschitz_certified_radii(clf, test_feats, test_labels, lipschitz)
    return {
        "linear_probe_accuracy": accuracy(clf, test_feats, test_labels),
        "lipschitz_bound": lipschitz,
        "feature_spread": spread,
        "lipschitz_over_spread": lipschitz / spread,
        "lipschitz_acr": float(radii.mean()),
        "lipschitz_certified_accuracy": {
            str(r): float((radii >= r).double().mean()) if r > 0 else float((radii > 0).double().mean())
            for r in RADII
        },
    }


def probe_onnx(path: str, validation: bool = False, data_root: str | None = None, threads: int = 2,
               dataset: str = "fashion-mnist") -> dict:
    """Probe an ONNX encoder on the test split (or, with ``validation``, the last sixth of train)."""
    t0 = time.perf_counter()
    images, labels = load_images(dataset, "train", data_root)
    if validation:
        cut = len(images) * 5 // 6  # Fashion-MNIST: train[:50k] -> train[50k:]
        test_images, test_labels = images[cut:], labels[cut:]
        images, labels = images[:cut], labels[:cut]
    else:
        test_images, test_labels = load_images(dataset, "test", data_root)
    lipschitz, method = certified_lipschitz(path)
    result = probe_features(
        onnx_features(path, images, threads=threads),
        labels,
        onnx_features(path, test_images, threads=threads),
        test_labels,
        lipschitz,
    )
    return {
        "model": path,
        "split": "validation" if validation else "test",
        **result,
        "lipschitz_bound_method": method,
        "n_train": len(images),
        "n_eval": len(test_images),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print the probe figures of an ONNX encoder."""
    parser = argparse.ArgumentParser(
        prog="python -m services.trainer.probe",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="ONNX encoder (input 'images', output 'features')")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="fit on the first five sixths of train, evaluate on the rest (model selection; never test)",
    )
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="directory of the dataset's files")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = probe_onnx(args.model, args.validation, args.data_root, args.threads, args.dataset)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
