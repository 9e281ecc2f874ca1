"""Training loop: loss goes down, resume is exact, DDP ranks agree, every mode runs, CLI exports."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from services.trainer.augment import AugmentConfig, random_view
from services.trainer.encoders import EncoderConfig, build_encoder
from services.trainer.export import export_onnx
from services.trainer.loop import DistContext, TrainConfig, train
from services.trainer.moco import MoCo, MocoConfig


def _config(tmp_path, encoder_config, **kw) -> TrainConfig:
    base = TrainConfig(
        epochs=1,
        batch_size=16,
        lr=0.05,
        warmup_steps=1,
        out_dir=str(tmp_path / "run"),
        progress=False,
        log_every=1,
        encoder=encoder_config,
        moco=MocoConfig(proj_dim=8, queue_size=32, momentum=0.9),
    )
    return replace(base, **kw)


def _state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def test_augment_is_seeded_and_in_range(tiny_images):
    cfg = AugmentConfig()
    a = random_view(tiny_images, cfg, torch.Generator().manual_seed(5))
    b = random_view(tiny_images, cfg, torch.Generator().manual_seed(5))
    c = random_view(tiny_images, cfg, torch.Generator().manual_seed(6))
    assert a.shape == tiny_images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def _in_batch_loss(state: dict | None, cfg: TrainConfig, images: torch.Tensor) -> float:
    """InfoNCE of two fixed views with in-batch negatives: a stationary yardstick (the queue is not)."""
    torch.manual_seed(cfg.seed)
    core = MoCo(build_encoder(cfg.encoder), cfg.encoder.feature_dim, cfg.moco)
    if state is not None:
        core.load_state_dict(state)
    gen = torch.Generator().manual_seed(123)
    v1, v2 = random_view(images, cfg.augment, gen), random_view(images, cfg.augment, gen)
    with torch.no_grad():
        q = F.normalize(core.head_q(core.encoder_q(v1)), dim=1)
        logits = q @ core.encode_keys(v2).T / cfg.moco.temperature
        return F.cross_entropy(logits, torch.arange(len(images))).item()


def test_few_steps_lower_the_loss(tmp_path, fmnist_small):
    enc = EncoderConfig(channels=(8, 16), strides=(2, 2), hidden_dim=64, feature_dim=32)
    cfg = _config(
        tmp_path,
        enc,
        epochs=10,
        batch_size=64,
        lr=0.1,
        lam=0.1,
        moco=MocoConfig(proj_dim=16, queue_size=1024),
    )
    before = _in_batch_loss(None, cfg, fmnist_small)
    train(cfg, fmnist_small)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert _in_batch_loss(state, cfg, fmnist_small) < before - 0.2
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows and all("loss" in r or "mean_loss" in r for r in rows)


def test_resume_continues_from_saved_step(tmp_path, tiny_encoder_config, tiny_images):
    straight = train(_config(tmp_path / "a", tiny_encoder_config, epochs=2, lam=0.3), tiny_images)
    interrupted = _config(tmp_path / "b", tiny_encoder_config, epochs=2, lam=0.3)
    _train_epochs(interrupted, tiny_images, stop_after=1)
    ckpt = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["step"] == straight.history[0]["step"]
    resumed = train(replace(interrupted, resume=True), tiny_images)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in straight.history]
    for k, v in _state(straight.encoder).items():
        torch.testing.assert_close(resumed.encoder.state_dict()[k], v, rtol=0, atol=0)


def _train_epochs(config: TrainConfig, images: torch.Tensor, stop_after: int) -> None:
    """Run ``config`` but stop after ``stop_after`` epochs, as if killed (the checkpoint stays)."""
    import services.trainer.loop as loop

    calls = {"n": 0}
    real_save = loop._atomic_save

    class _Stop(Exception):
        pass

    def save_then_maybe_stop(obj, path):
        real_save(obj, path)
        calls["n"] += 1
        if calls["n"] >= stop_after:
            raise _Stop

    loop._atomic_save = save_then_maybe_stop
    try:
        train(config, images)
    except _Stop:
        pass
    finally:
        loop._atomic_save = real_save


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, encoder_config, images, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(
            epochs=1,
            batch_size=8,
            max_steps_per_epoch=2,
            lr=0.1,
            warmup_steps=1,
            lam=0.3,
            out_dir=out_dir,
            progress=False,
            encoder=encoder_config,
            moco=MocoConfig(proj_dim=8, queue_size=32),
        )
        result = train(cfg, images, ctx=DistContext(rank, world, torch.device("cpu")))
        results[rank] = {k: v.numpy() for k, v in result.encoder.state_dict().items()}
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_leave_identical_weights(tmp_path, tiny_encoder_config, tiny_images):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _ddp_worker,
            args=(2, _free_port(), str(tmp_path / "ddp"), tiny_encoder_config, tiny_images, results),
            nprocs=2,
            start_method="spawn",
        )
        r0, r1 = dict(results[0]), dict(results[1])
    first_step = _config(tmp_path / "init", tiny_encoder_config, batch_size=8, max_steps_per_epoch=1, lr=0.0)
    initial = train(first_step, tiny_images)
    for k in r0:
        assert (r0[k] == r1[k]).all(), k
    assert any((r0[k] != initial.encoder.state_dict()[k].numpy()).any() for k in r0)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2


@pytest.mark.parametrize("mode", ["rocl", "rrm"])
def test_other_modes_run(tmp_path, tiny_encoder_config, tiny_images, mode):
    teacher = None
    if mode == "rrm":
        teacher_enc = train(_config(tmp_path / "t", tiny_encoder_config, max_steps_per_epoch=1), tiny_images)
        teacher = str(tmp_path / "teacher.onnx")
        export_onnx(teacher_enc.encoder, teacher)
    labels = torch.arange(len(tiny_images)) % 10
    cfg = _config(tmp_path, tiny_encoder_config, mode=mode, epochs=2, lam=0.1, ce_weight=0.5)
    result = train(cfg, tiny_images, labels, teacher_onnx=teacher)
    assert all(torch.isfinite(torch.tensor(h["mean_loss"])) for h in result.history)
    if mode == "rrm":
        assert result.history[-1]["mean_objective"] < result.history[0]["mean_objective"] + 1e-6


def test_cli_trains_and_exports(tmp_path):
    from services.trainer.__main__ import main

    onnx_path = tmp_path / "cli.onnx"
    rc = main(
        [
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-steps-per-epoch",
            "2",
            "--train-limit",
            "256",
            "--enc-channels",
            "4,8",
            "--enc-strides",
            "2,2",
            "--enc-hidden",
            "16",
            "--feature-dim",
            "8",
            "--moco-k",
            "64",
            "--lam",
            "0.3",
            "--out-dir",
            str(tmp_path / "cli"),
            "--no-progress",
            "--threads",
            "1",
            "--skip-probe",
            "--export",
            str(onnx_path),
        ]
    )
    assert rc == 0
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["training"]["lam"] == 0.3 and card["training"]["penalty_form"] == "scale_invariant"
    assert card["lipschitz_bound_l2"] > 0
    assert card["output"]["shape"] == ["batch", 8]
