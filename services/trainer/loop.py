"""Training loop for MoCo, RoCL and RRM pre-training: DDP-aware, seeded, checkpointed every epoch."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize
from tqdm import tqdm

from services.trainer.augment import AugmentConfig, random_view
from services.trainer.encoders import ConvEncoder, EncoderConfig, build_encoder
from services.trainer.moco import MoCo, MocoConfig
from services.trainer.objectives import PgdConfig, info_nce, rocl_adversarial_views, rrm_loss
from services.trainer.spectral import SpectralEstimator, feature_spread, spectral_penalty

MODES = ("moco", "rocl", "rrm")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a pre-training run; batch_size is per process."""

    mode: str = "moco"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    seed: int = 0
    lam: float = 0.0
    penalty: str = "scale_invariant"
    power_iter: int = 1
    max_steps_per_epoch: int = 0
    out_dir: str = "runs/pretrain"
    resume: bool = False
    log_every: int = 20
    progress: bool = True
    ce_weight: float = 0.0
    spread_batch: int = 64
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pgd: PgdConfig = field(default_factory=PgdConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank among world_size processes and its torch device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class TrainResult(NamedTuple):
    """The trained encoder (eval mode, on CPU), per-epoch metrics and the wall time of this run's epochs."""

    encoder: ConvEncoder
    history: list[dict]
    wall_s: float


class Student(nn.Module):
    """RRM student: an encoder plus an optional linear classifier used only for the CE term."""

    def __init__(self, encoder: ConvEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.feature_dim, num_classes) if num_classes else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.encoder(images)
        return features, (self.classifier(features) if self.classifier is not None else None)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' picks the current accelerator (indexed by local rank) when there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return torch.device(acc.type, local_rank) if acc is not None else torch.device("cpu")


def init_distributed(rank: int, world_size: int, device: torch.device) -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); a no-op for one process."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend=dist.get_default_backend_for_device(device), rank=rank, world_size=world_size
        )
    return DistContext(rank, world_size, device)


def epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Generator for one epoch's augmentation/attack draws; depends only on (seed, epoch, rank)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


class _TeacherOnnx:
    """Frozen teacher features from an ONNX encoder (onnxruntime, CPU)."""

    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(["features"], {"images": images.detach().cpu().numpy()})
        return torch.from_numpy(out).to(images.device)


def _objective(
    config: TrainConfig,
    core: nn.Module,
    model: nn.Module,
    teacher: _TeacherOnnx | None,
    x: torch.Tensor,
    y: torch.Tensor | None,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective without the penalty, encoder features [B, D]) of one batch x [B, C, H, W] for the mode."""
    if config.mode == "rrm":
        view = random_view(x, config.augment, gen)
        features, class_logits = model(view)
        return rrm_loss(features, teacher(view), class_logits, y, config.ce_weight), features
    v1, v2 = random_view(x, config.augment, gen), random_view(x, config.augment, gen)
    im_q = v1
    if config.mode == "rocl":
        keys = core.encode_keys(v2)
        adv = rocl_adversarial_views(lambda z: info_nce(*core.query_logits(z, keys)[:2]), v1, config.pgd, gen)
        im_q = torch.cat([v1, adv])
    out = model(im_q, v2)
    return info_nce(out.logits, out.labels), out.features[: len(x)]


def weights_cached(config: TrainConfig) -> contextlib.AbstractContextManager:
    """For one training step: AOL weights (a parametrization, recomputed at every access: the forward, the
    clean-spread forward and each power-iteration step; the first dense layer's Gram is [in, in]) computed
    once. Not under RoCL, whose PGD backpropagates several times through the same weights."""
    if config.encoder.layers != "plain" and config.mode != "rocl":
        return parametrize.cached()
    return contextlib.nullcontext()


def train(
    config: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    ctx: DistContext | None = None,
    teacher_onnx: str | None = None,
) -> TrainResult:
    """Pre-train an encoder on images [N, C, H, W] in [0, 1]; labels only for RRM's optional CE term."""
    ctx = ctx or DistContext()
    out_dir = Path(config.out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.encoder)
    teacher = None
    if config.mode == "rrm":
        if teacher_onnx is None:
            raise ValueError("mode 'rrm' needs a teacher ONNX encoder")
        teacher = _TeacherOnnx(teacher_onnx)
        core: nn.Module = Student(encoder, 10 if config.ce_weight > 0 else 0)
    else:
        core = MoCo(encoder, config.encoder.feature_dim, config.moco, seed=config.seed)
    core.to(ctx.device)
    estimator = SpectralEstimator(encoder, n_iter=config.power_iter, seed=config.seed).to(ctx.device)
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    n_local = len(range(ctx.rank, len(images), ctx.world_size))
    steps_per_epoch = n_local // config.batch_size
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"{n_local} images per process < batch size {config.batch_size}")
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, total_steps, min(config.warmup_steps, total_steps))
    )

    start_epoch, step, wall_before, history = 0, 0, 0.0, []
    ckpt_path = out_dir / CHECKPOINT
    if config.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=ctx.device, weights_only=False)
        core.load_state_dict(state["model"])
        estimator.load_state_dict(state["estimator"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, wall_before, history = (
            state["epoch"],
            state["step"],
            state["wall_s"],
            state["history"],
        )

    model = DistributedDataParallel(core) if ctx.world_size > 1 else core
    images = images.to(ctx.device)
    labels = labels.to(ctx.device) if labels is not None else None
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        core.train()
        estimator.train()
        gen = epoch_generator(config.seed, epoch, ctx.rank)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed + epoch))
        local = order[ctx.rank :: ctx.world_size]
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            leave=False,
        )
        sums: dict[str, float] = {}
        for i in bar:
            idx = local[i * config.batch_size : (i + 1) * config.batch_size].to(ctx.device)
            x = images[idx]
            y = labels[idx] if labels is not None else None
            with weights_cached(config):  # the first access (the objective's forward) records the graph
                main, features = _objective(config, core, model, teacher, x, y, gen)
                if config.spread_batch and config.lam > 0 and config.penalty == "scale_invariant":
                    # S_batch on clean images: on augmented views the penalty is cheaper to game by amplifying
                    # brightness/noise directions (large ℓ2 image changes) instead of the data's own spread.
                    features = encoder(x[: config.spread_batch])
                log_norms = estimator.log_norms()
                penalty = spectral_penalty(config.penalty, log_norms, features, config.lam)
                loss = main + penalty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            row = {
                "loss": loss.item(),
                "objective": main.item(),
                "penalty": penalty.item(),
                "log_lip_est": log_norms.sum().item(),
                "spread": float(feature_spread(features.detach())),
            }
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
            if ctx.is_main and config.log_every and step % config.log_every == 0:
                _append_jsonl(
                    out_dir / METRICS,
                    {
                        "epoch": epoch,
                        "step": step,
                        "lr": scheduler.get_last_lr()[0],
                        "elapsed_s": wall_before + time.perf_counter() - t_start,
                        **row,
                    },
                )
                bar.set_postfix(loss=f"{row['loss']:.3f}", log_lip=f"{row['log_lip_est']:.2f}")
        summary = {
            "epoch": epoch + 1,
            "step": step,
            "wall_s": wall_before + time.perf_counter() - t_start,
            **{f"mean_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        history.append(summary)
        if ctx.is_main:
            _append_jsonl(out_dir / METRICS, summary)
            print(json.dumps(summary), flush=True)
            _atomic_save(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "wall_s": summary["wall_s"],
                    "history": history,
                    "model": core.state_dict(),
                    "estimator": estimator.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "config": asdict(config),
                },
                ckpt_path,
            )
        if ctx.world_size > 1:
            dist.barrier()
    encoder.eval().cpu()
    return TrainResult(encoder, history, wall_before + time.perf_counter() - t_start)
