"""A quick screen of candidate encoders for REaaS-SC, in-process: minutes per encoder, not ``make run``'s
half hour.

For each ONNX encoder: its features of the training and test images, its certified Lipschitz bound L (the
bound engine), then per noise scale c the client's MLP (``edge_client.training.train_mlp``, σ_F = c·S/√d),
feature-space smoothing (``edge_client.smoothing.certify_features``) on the first ``--inputs`` of the
evaluation subset, and the image radius R_F / L — the LIPSCHITZ conversion, a lower bound on what
F2IPerturb answers. Smaller n than ``make run`` (default 10,000 against 100,000) makes every radius
smaller by the same rule for every candidate, so the screen ranks encoders; ``make run`` measures one.

``python -m benchmarks.sc_screen --models models/fmnist-robust.onnx runs/other.onnx --noise-c 1,2 --json``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from edge_client.metrics import summarize
from edge_client.mlp import feature_spread
from edge_client.smoothing import SmoothingConfig, certify_features, input_rng
from edge_client.training import TrainConfig, noise_sigma, train_mlp
from reaas.datasets import LOADERS, evaluation_subset_indices

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def screen_rows(mlp, test_features: np.ndarray, test_labels: np.ndarray, indices: np.ndarray,
                config: SmoothingConfig, lipschitz: float, seed: int) -> list[dict]:
    """Journal-like rows (label, prediction, radius in image units, clean_prediction) of screened inputs."""
    rows = []
    for i in indices:
        prediction, feature_radius = certify_features(mlp, test_features[i], config, input_rng(seed, int(i)))
        rows.append({"label": int(test_labels[i]), "prediction": int(prediction),
                     "radius": feature_radius / lipschitz if prediction >= 0 else -1.0,
                     "clean_prediction": int(mlp.predict(test_features[i][None])[0])})
    return rows


def screen(model: str, images, labels, test_images, test_labels, noise_cs: Sequence[float], inputs: int,
           n: int, epochs: int, seed: int, threads: int) -> list[dict]:
    """One summary per noise scale c of one encoder."""
    from services.trainer.probe import certified_lipschitz, onnx_features

    train = onnx_features(model, images, threads=threads).numpy()
    test = onnx_features(model, test_images, threads=threads).numpy()
    lipschitz, _ = certified_lipschitz(model)
    spread = feature_spread(train)
    indices = evaluation_subset_indices(inputs, total=len(test))
    out = []
    for c in noise_cs:
        t0 = time.perf_counter()
        mlp = train_mlp(train, labels.numpy(), TrainConfig(epochs=epochs, noise_c=c, seed=seed))
        config = SmoothingConfig(sigma=noise_sigma(spread, train.shape[1], c), n=n)
        rows = screen_rows(mlp, test, test_labels.numpy(), indices, config, lipschitz, seed)
        summary = summarize(rows, RADII)
        out.append({"model": model, "noise_c": c, "sigma_f": config.sigma, "lipschitz_bound_l2": lipschitz,
                    "lipschitz_over_spread": lipschitz / spread, "num_test": summary["num_test"],
                    "clean_accuracy": summary["clean_accuracy"],
                    "certified_accuracy": summary["certified_accuracy"], "acr": summary["acr"],
                    "seconds": time.perf_counter() - t0})
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, screen every encoder, print one line (or one JSON object) per (encoder, c)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sc_screen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="ONNX encoders (images -> features)")
    parser.add_argument("--noise-c", default="1,2", help="noise scales c, comma-separated (default 1,2)")
    parser.add_argument("--inputs", type=int, default=200, help="first N of the evaluation subset")
    parser.add_argument("--n", type=int, default=10_000, help="smoothing samples per input (default 10,000)")
    parser.add_argument("--epochs", type=int, default=20, help="MLP epochs (default 20, as make run)")
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="directory of the dataset's files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = parser.parse_args(argv)
    try:
        noise_cs = [float(c) for c in args.noise_c.split(",")]
    except ValueError:
        parser.error(f"--noise-c must be comma-separated numbers, got {args.noise_c!r}")
    import torch

    from services.trainer.data import load_images

    torch.set_num_threads(args.threads)
    images, labels = load_images(args.dataset, "train", args.data_root)
    test_images, test_labels = load_images(args.dataset, "test", args.data_root)
    for model in args.models:
        for row in screen(model, images, labels, test_images, test_labels, noise_cs, args.inputs, args.n,
                          args.epochs, args.seed, args.threads):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                acc = " / ".join(f"{v:.2f}" for v in row["certified_accuracy"].values())
                print(f"{model}  c={row['noise_c']:g}  L/S {row['lipschitz_over_spread']:.3f}  clean "
                      f"{row['clean_accuracy']:.3f}  cert. acc. r = {' / '.join(f'{r:g}' for r in RADII)}: "
                      f"{acc}  ACR {row['acr']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
