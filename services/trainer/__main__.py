"""Pre-train an encoder (MoCo v2 + spectral penalty, RoCL, or RRM), then export ONNX + model card.

Single process:  python -m services.trainer --mode moco --lam 0.3 --export runs/moco-robust.onnx
The shipped robust encoder (distilled from the standard one): see the Makefile's models/fmnist-robust.onnx
Data parallel:   torchrun --nproc_per_node=2 -m services.trainer --mode moco ...
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, replace

import torch

from reaas.datasets import LOADERS
from services.trainer.aol import LAYER_KINDS
from services.trainer.augment import AugmentConfig
from services.trainer.data import input_statistics, load_images, train_val_split
from services.trainer.encoders import ACTIVATIONS, EncoderConfig
from services.trainer.export import (
    export_onnx,
    hardware_description,
    normalize_feature_scale,
    write_model_card,
)
from services.trainer.loop import MODES, TrainConfig, init_distributed, resolve_device, train
from services.trainer.moco import MocoConfig
from services.trainer.objectives import PgdConfig
from services.trainer.spectral import PENALTY_FORMS


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t)


def build_parser() -> argparse.ArgumentParser:
    """All training options, with defaults shown in --help."""
    p = argparse.ArgumentParser(
        prog="python -m services.trainer",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d, e, m, a, g = TrainConfig(), EncoderConfig(), MocoConfig(), AugmentConfig(), PgdConfig()
    p.add_argument("--mode", choices=MODES, default=d.mode, help="moco (+penalty), rocl (adversarial), rrm")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lam", type=float, default=d.lam, help="spectral penalty weight λ (0 = non-robust)")
    p.add_argument(
        "--penalty",
        choices=PENALTY_FORMS,
        default=d.penalty,
        help="'log': λΣlog‖T‖; 'scale_invariant': λ(Σlog‖T‖ − log S_batch)",
    )
    p.add_argument(
        "--spread-batch",
        type=int,
        default=d.spread_batch,
        help="clean images per step whose feature spread S_batch enters the scale-invariant penalty "
        "(0 = the augmented query views)",
    )
    p.add_argument(
        "--power-iter", type=int, default=d.power_iter, help="power-iteration steps per training step"
    )
    p.add_argument("--max-steps-per-epoch", type=int, default=d.max_steps_per_epoch, help="0 = full epochs")
    p.add_argument("--out-dir", default=d.out_dir, help="checkpoint.pt and metrics.jsonl go here")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.pt")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics rows")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--val-size", type=int, default=0, help="hold out the last N training images")
    p.add_argument(
        "--train-limit", type=int, default=0, help="use only the first N training images (0 = all)"
    )
    p.add_argument("--dataset", choices=sorted(LOADERS), default="fashion-mnist",
                   help="training images (labels unused except by RRM's CE term); the encoder's input "
                        "shape and normalization follow them")
    p.add_argument("--data-root", default=None,
                   help="directory of the dataset's files (Fashion-MNIST: the Debian package's, by default; "
                        "cifar10 / svhn / stl10 / tiny-imagenet: required, your own copy)")
    p.add_argument("--device", default="auto", help="'auto' = the accelerator if any, else cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    p.add_argument("--enc-channels", type=_ints, default=e.channels, help="conv widths, comma-separated")
    p.add_argument("--enc-strides", type=_ints, default=e.strides, help="conv strides, comma-separated")
    p.add_argument("--enc-hidden", type=int, default=e.hidden_dim)
    p.add_argument("--feature-dim", type=int, default=e.feature_dim)
    p.add_argument("--batch-norm", action="store_true", help="BatchNorm after each conv (folded at export)")
    p.add_argument("--enc-layers", choices=LAYER_KINDS, default=e.layers,
                   help="'aol': almost-orthogonal conv / dense layers, 1-Lipschitz by construction "
                        "(the encoder's bound is then at most 1 / std of its input normalization), each "
                        "rescaled over its inputs (the paper's rule); 'aol-narrow': the same bound, each "
                        "layer rescaled on its narrower side (a wide layer such as the first dense one "
                        "keeps norm ~1 instead of shrinking); 'plain': ordinary layers")
    p.add_argument("--enc-activation", choices=ACTIVATIONS, default=e.activation,
                   help="'maxmin': sort channel pairs (1-Lipschitz, keeps the gradient norm; pairs with AOL "
                        "layers); 'relu'")
    p.add_argument("--moco-dim", type=int, default=m.proj_dim, help="projection head output size")
    p.add_argument("--moco-k", type=int, default=m.queue_size, help="queue length")
    p.add_argument("--moco-m", type=float, default=m.momentum, help="key encoder momentum")
    p.add_argument("--moco-t", type=float, default=m.temperature, help="softmax temperature")
    p.add_argument("--aug-crop-min", type=float, default=a.crop_scale[0], help="min crop area fraction")
    p.add_argument("--aug-noise", type=float, default=a.noise_std, help="pixel noise std")
    p.add_argument("--pgd-eps", type=float, default=g.eps, help="RoCL ℓ2 radius (pixels in [0,1])")
    p.add_argument("--pgd-steps", type=int, default=g.steps)
    p.add_argument("--pgd-step-size", type=float, default=g.step_size)
    p.add_argument("--teacher", default=None, help="RRM: teacher ONNX encoder")
    p.add_argument("--ce-weight", type=float, default=d.ce_weight, help="RRM: weight of the optional CE term")
    p.add_argument("--export", default=None, help="write the ONNX encoder here (+ .json model card)")
    p.add_argument("--skip-probe", action="store_true", help="do not run the linear probe for the model card")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Typed config from parsed arguments."""
    return TrainConfig(
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        lam=args.lam,
        penalty=args.penalty,
        spread_batch=args.spread_batch,
        power_iter=args.power_iter,
        max_steps_per_epoch=args.max_steps_per_epoch,
        out_dir=args.out_dir,
        resume=args.resume,
        log_every=args.log_every,
        progress=not args.no_progress,
        ce_weight=args.ce_weight,
        encoder=EncoderConfig(
            channels=args.enc_channels,
            strides=args.enc_strides,
            hidden_dim=args.enc_hidden,
            feature_dim=args.feature_dim,
            batch_norm=args.batch_norm,
            layers=args.enc_layers,
            activation=args.enc_activation,
        ),
        moco=MocoConfig(
            proj_dim=args.moco_dim, queue_size=args.moco_k, momentum=args.moco_m, temperature=args.moco_t
        ),
        augment=AugmentConfig(crop_scale=(args.aug_crop_min, 1.0), noise_std=args.aug_noise),
        pgd=PgdConfig(eps=args.pgd_eps, steps=args.pgd_steps, step_size=args.pgd_step_size),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse, train, and (on rank 0) export."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ctx = init_distributed(rank, world, resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0))))
    config = config_from_args(args)
    images, labels = load_images(args.dataset, "train", args.data_root)
    if images.shape[2] != images.shape[3]:
        raise SystemExit(f"{args.dataset}: the encoder family takes square images, "
                         f"got {list(images.shape[1:])}")
    mean, std = input_statistics(args.dataset, images)
    config = replace(config, encoder=replace(config.encoder, in_channels=int(images.shape[1]),
                                             image_size=int(images.shape[2]), mean=mean, std=std))
    if args.train_limit:
        images, labels = images[: args.train_limit], labels[: args.train_limit]
    train_part, _ = train_val_split(len(images), args.val_size)
    images, labels = images[train_part], labels[train_part]
    result = train(config, images, labels, ctx, teacher_onnx=args.teacher)
    if ctx.is_main and args.export:
        scale = normalize_feature_scale(result.encoder, images[:10_000])
        _export(args, config, result, len(images), ctx, scale)
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def _export(args, config: TrainConfig, result, n_images: int, ctx, scale: float) -> None:
    from services.trainer.probe import certified_lipschitz, probe_onnx

    parity = export_onnx(result.encoder, args.export, seed=config.seed)
    lipschitz, method = certified_lipschitz(args.export)
    probe = {} if args.skip_probe else probe_onnx(args.export, data_root=args.data_root, threads=args.threads,
                                                  dataset=args.dataset)
    shape = [config.encoder.in_channels, config.encoder.image_size, config.encoder.image_size]
    card = {
        "input": {"name": "images", "shape": ["batch", *shape], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "features", "shape": ["batch", config.encoder.feature_dim], "dtype": "float32"},
        "architecture": {"family": "ConvEncoder", **config.encoder.to_dict()},
        "data": {
            "dataset": "Fashion-MNIST" if args.dataset == "fashion-mnist" else args.dataset,
            "split": "train",
            "labels_used": config.mode == "rrm" and config.ce_weight > 0,
            "n_images": n_images,
            "val_held_out": args.val_size,
        },
        "training": {
            "mode": config.mode,
            "lam": config.lam,
            "penalty_form": config.penalty if config.lam > 0 else "none",
            "epochs": config.epochs,
            "steps": result.history[-1]["step"] if result.history else 0,
            "config": json.loads(json.dumps(asdict(config), default=str)),
            "teacher": args.teacher,
        },
        "wall_time_s": round(result.wall_s, 1),
        "hardware": hardware_description(ctx.device, ctx.world_size),
        "lipschitz_bound_l2": lipschitz,
        "lipschitz_bound_method": method,
        "linear_probe_accuracy": probe.get("linear_probe_accuracy"),
        "feature_spread": probe.get("feature_spread"),
        "lipschitz_over_spread": probe.get("lipschitz_over_spread"),
        "feature_scale_factor": scale,
        "onnx_parity_max_abs_diff": parity,
        "command": "python -m services.trainer " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card_path = write_model_card(args.export, card)
    print(
        json.dumps({"exported": args.export, "card": str(card_path), "parity": parity, **probe}), flush=True
    )


if __name__ == "__main__":
    sys.exit(main())
