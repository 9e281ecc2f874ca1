"""A linear view of the pixels beside an encoder's features: f'(x) = [w·P(x − μ) ; h(x)].

``P`` [k, C·H·W] holds the top-k principal directions of the training images (orthonormal rows, found
without labels, as pre-training is), ``μ`` their mean image, and ``w`` scales the view so that its
feature spread is ``view_spread`` times the encoder's. The view is w-Lipschitz, so f' is
√(w² + L_h²)-Lipschitz: the two blocks change on disjoint coordinates (the bound engine's rule for a sum
of zero-padded branches, ``services/perturb/engine/lipschitz.py``).

Why: on Fashion-MNIST the images' own principal subspace is a strong robust representation — a linear
probe on 128 principal components reaches 83.9% at L/S 0.126, ahead of every encoder trained with the
spectral penalty (``docs/figures/encoder_pareto.png``) — and the learned features add what the linear view
misses (the probe on both: 86.0%).

The composed encoder is plain ONNX: the base graph, unchanged, with its output padded into the last d
coordinates by a Gemm, and a Flatten + Gemm from the images padded into the first k, added:
``Flatten(images) → Gemm([w·P; 0], −[w·Pμ; 0])`` + ``Gemm(h, [0; I_d])``. Every op is one the bound
engine supports exactly.

``python -m services.trainer.pixel_view --base runs/robust-base.onnx --export models/fmnist-robust.onnx``
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_client.mlp import feature_spread
from reaas.datasets import LOADERS

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class PixelViewConfig:
    """How the view is fitted: ``components`` principal directions of the first ``fit_images`` training
    images, scaled so that the view's feature spread is ``view_spread`` × the base encoder's."""

    components: int = 128
    view_spread: float = 4.0
    fit_images: int = 20_000

    def __post_init__(self) -> None:
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        if not (self.view_spread > 0 and np.isfinite(self.view_spread)):
            raise ValueError(f"view_spread must be positive and finite, got {self.view_spread}")
        if self.fit_images < 2:
            raise ValueError(f"fit_images must be >= 2, got {self.fit_images}")


def principal_directions(images: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean image [D], top principal directions [k, D] with orthonormal rows) of images [N, C, H, W].

    Computed in float64 from the eigenvectors of the [D, D] covariance; each direction's sign is fixed
    (largest-magnitude entry positive) so the result does not depend on the eigensolver's choice.
    """
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    if not components <= flat.shape[1]:
        raise ValueError(f"components {components} exceeds the pixel count {flat.shape[1]}")
    mean = flat.mean(axis=0)
    centered = flat - mean
    _, vectors = np.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
    top = vectors[:, ::-1][:, :components].T.copy()  # [k, D]
    signs = np.sign(top[np.arange(components), np.abs(top).argmax(axis=1)])
    return mean, top * signs[:, None]


def view_weight(images: np.ndarray, base_features: np.ndarray, mean: np.ndarray, directions: np.ndarray,
                view_spread: float) -> float:
    """w such that the view w·P(x − μ) of ``images`` spreads ``view_spread`` × the base features."""
    view = (np.asarray(images, dtype=np.float64).reshape(len(images), -1) - mean) @ directions.T
    view_s, base_s = feature_spread(view), feature_spread(base_features)
    if not (view_s > 0 and base_s > 0):
        raise ValueError(f"the images do not vary along the view (spread {view_s:g}) or the base features "
                         f"do not (spread {base_s:g}): no view scale can be fitted; use distinct images")
    return float(view_spread * base_s / view_s)


def view_matrices(mean: np.ndarray, directions: np.ndarray, weight: float, base_dim: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 (view weight [k+d, D], view bias [k+d], base embedding [k+d, d]) of the composed encoder."""
    k, d = directions.shape[0], base_dim
    view_w = np.zeros((k + d, directions.shape[1]), dtype=np.float64)
    view_w[:k] = weight * directions
    view_b = np.zeros(k + d, dtype=np.float64)
    view_b[:k] = -(weight * directions) @ mean
    embed = np.zeros((k + d, d), dtype=np.float64)
    embed[k:] = np.eye(d)
    return view_w.astype(np.float32), view_b.astype(np.float32), embed.astype(np.float32)


def compose(base: onnx.ModelProto, mean: np.ndarray, directions: np.ndarray, weight: float
            ) -> onnx.ModelProto:
    """The base encoder (one input ``images`` [B, C, H, W], one output ``features`` [B, d]) with the pixel
    view prepended to its features: output ``features`` [B, k + d]."""
    model = onnx.ModelProto()
    model.CopyFrom(base)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError("the base encoder must have exactly one input and one output")
    image_name, out = graph.input[0].name, graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise ValueError(f"the base encoder's output must be [batch, d] with a static d, got {out}")
    base_dim = int(dims[1].dim_value)
    in_dims = graph.input[0].type.tensor_type.shape.dim[1:]
    static = all(d.HasField("dim_value") for d in in_dims)
    pixels = int(np.prod([d.dim_value for d in in_dims])) if static else 0
    if pixels != directions.shape[1]:
        shape = [d.dim_value or d.dim_param for d in in_dims]
        raise ValueError(f"the view's directions have {directions.shape[1]} pixels, the base encoder's input "
                         f"{shape} has {pixels or 'a dynamic count of'}: fit them on its input shape")
    names = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    prefix = "pixel_view"
    while any(name.startswith(prefix) for name in names):
        prefix += "_"
    base_out = f"{prefix}/base_features"
    for node in graph.node:
        node.output[:] = [base_out if o == out.name else o for o in node.output]
        node.input[:] = [base_out if i == out.name else i for i in node.input]
    view_w, view_b, embed = view_matrices(mean, directions, weight, base_dim)
    graph.initializer.extend([
        numpy_helper.from_array(view_w, f"{prefix}/weight"),
        numpy_helper.from_array(view_b, f"{prefix}/bias"),
        numpy_helper.from_array(embed, f"{prefix}/embed"),
        numpy_helper.from_array(np.zeros(len(view_b), dtype=np.float32), f"{prefix}/zeros"),
    ])
    graph.node.extend([
        helper.make_node("Flatten", [image_name], [f"{prefix}/pixels"], axis=1),
        helper.make_node("Gemm", [f"{prefix}/pixels", f"{prefix}/weight", f"{prefix}/bias"],
                         [f"{prefix}/view"], transB=1),
        helper.make_node("Gemm", [base_out, f"{prefix}/embed", f"{prefix}/zeros"], [f"{prefix}/padded"],
                         transB=1),
        helper.make_node("Add", [f"{prefix}/view", f"{prefix}/padded"], [out.name]),
    ])
    dims[1].dim_value = base_dim + directions.shape[0]
    onnx.checker.check_model(model)
    return model


def run_onnx(model: onnx.ModelProto | str | Path, images: np.ndarray, threads: int = 2) -> np.ndarray:
    """features [N, d] (float32) of images [N, C, H, W] in [0, 1] by ONNX Runtime on the CPU."""
    import torch

    from services.trainer.probe import onnx_features

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return onnx_features(source, batch, threads=threads).numpy()


def view_only(mean: np.ndarray, directions: np.ndarray, input_shape: tuple[int, ...],
              weight: float = 1.0) -> onnx.ModelProto:
    """The view alone as an encoder: images [B, *input_shape] -> features w·P(x − μ) [B, k] (opset 17).

    A reference point for learned encoders: no learned features, Lipschitz constant exactly w."""
    k = directions.shape[0]
    view_w, view_b, _ = view_matrices(mean, directions, weight, 0)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["pixels"], axis=1),
         helper.make_node("Gemm", ["pixels", "view_weight", "view_bias"], ["features"], transB=1)],
        "pixel_view",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", k])],
        [numpy_helper.from_array(view_w, "view_weight"), numpy_helper.from_array(view_b, "view_bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def fit_pixel_view(base: onnx.ModelProto | None, images: np.ndarray,
                   config: PixelViewConfig = PixelViewConfig(), threads: int = 2
                   ) -> tuple[onnx.ModelProto, dict]:
    """The composed encoder fitted on training images [N, C, H, W], and what was fitted (weight, spreads);
    with no ``base``, the view alone at weight 1 (``view_only``).

    Raises ``RuntimeError`` when ONNX Runtime's output of the composed model differs from the
    concatenation computed beside it by more than 1e-4 × max(1, its largest feature).
    """
    fit = np.asarray(images[: config.fit_images], dtype=np.float32)
    mean, directions = principal_directions(fit, config.components)
    check = fit[:256]
    view = (check.reshape(len(check), -1) - mean) @ directions.T
    if base is None:
        model, weight, expected = view_only(mean, directions, fit.shape[1:]), 1.0, view
        fitted = {"base_dim": 0}
    else:
        base_features = run_onnx(base, fit, threads=threads)
        weight = view_weight(fit, base_features, mean, directions, config.view_spread)
        model = compose(base, mean, directions, weight)
        expected = np.concatenate([weight * view, base_features[: len(check)]], axis=1)
        fitted = {"base_feature_spread": feature_spread(base_features), "base_dim": base_features.shape[1]}
    parity = float(np.abs(run_onnx(model, check, threads=threads) - expected).max())
    # checked relative to the features' size: float32 features of magnitude m carry rounding of order m·1e-7
    relative = parity / max(1.0, float(np.abs(expected).max()))
    if not relative <= PARITY_TOL:
        raise RuntimeError(f"composed encoder differs from the concatenation by {parity:.3g} "
                           f"({relative:.3g} of the largest feature) > {PARITY_TOL}")
    return model, {"weight": weight, "parity": parity, **fitted}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments, defaults shown in --help."""
    d = PixelViewConfig()
    parser = argparse.ArgumentParser(prog="python -m services.trainer.pixel_view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None,
                        help="ONNX encoder to extend (input images, output features); without it the view "
                             "alone is exported (a reference point, weight 1)")
    parser.add_argument("--export", required=True, help="path of the composed ONNX encoder "
                        "(its card beside it)")
    parser.add_argument("--components", type=int, default=d.components,
                        help=f"principal directions in the view (default {d.components})")
    parser.add_argument("--view-spread", type=float, default=d.view_spread,
                        help=f"the view's feature spread over the base encoder's (default {d.view_spread})")
    parser.add_argument("--fit-images", type=int, default=d.fit_images,
                        help=f"training images the directions and scale are fitted on "
                             f"(default {d.fit_images})")
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="directory of the dataset's files")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime / torch CPU threads")
    parser.add_argument("--skip-probe", action="store_true", help="write the card without the linear probe")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Fit the view, export the composed encoder and write its model card (probe, certified L, L/S)."""
    args = build_parser().parse_args(argv)
    from services.trainer.data import load_images
    from services.trainer.export import write_model_card
    from services.trainer.probe import certified_lipschitz, probe_onnx

    config = PixelViewConfig(args.components, args.view_spread, args.fit_images)
    base_path, export = (Path(args.base) if args.base else None), Path(args.export)
    if base_path is not None and base_path.resolve() == export.resolve():
        raise SystemExit("--export must differ from --base (the base is read while the result is written)")
    t0 = time.perf_counter()
    images, _ = load_images(args.dataset, "train", args.data_root)
    base = onnx.load(str(base_path)) if base_path is not None else None
    composed, fitted = fit_pixel_view(base, images.numpy(), config, args.threads)
    export.parent.mkdir(parents=True, exist_ok=True)
    tmp = export.with_suffix(".onnx.tmp")
    onnx.save(composed, str(tmp))
    tmp.replace(export)
    lipschitz, method = certified_lipschitz(str(export))
    probe = {} if args.skip_probe else probe_onnx(str(export), data_root=args.data_root, threads=args.threads,
                                                  dataset=args.dataset)
    base_card_path = base_path.with_suffix(".json") if base_path is not None else None
    base_card = json.loads(base_card_path.read_text()) if base_card_path and base_card_path.exists() else {}
    shape = list(images.shape[1:])
    card = {
        "input": {"name": composed.graph.input[0].name, "shape": ["batch", *shape], "dtype": "float32",
                  "range": [0.0, 1.0]},
        "output": {"name": composed.graph.output[0].name,
                   "shape": ["batch", config.components + fitted["base_dim"]],
                   "dtype": "float32"},
        "architecture": {"family": "PixelView", "pixel_view": asdict(config), "view_weight": fitted["weight"],
                         "base": base_card.get("architecture", {}) if base_path is not None else None},
        "data": {"dataset": "Fashion-MNIST" if args.dataset == "fashion-mnist" else args.dataset,
                 "split": "train", "labels_used": False, "n_images": min(config.fit_images, len(images))},
        "training": {**base_card.get("training", {}), "base_command": base_card.get("command"),
                     "base_sha256": base_card.get("model_sha256")},
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "lipschitz_bound_l2": lipschitz,
        "lipschitz_bound_method": method,
        "linear_probe_accuracy": probe.get("linear_probe_accuracy"),
        "feature_spread": probe.get("feature_spread"),
        "lipschitz_over_spread": probe.get("lipschitz_over_spread"),
        "onnx_parity_max_abs_diff": fitted["parity"],
        "command": "python -m services.trainer.pixel_view " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card_path = write_model_card(export, card)
    print(json.dumps({"exported": str(export), "card": str(card_path), **fitted, **probe}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
