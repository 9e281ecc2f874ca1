"""AOL encoders: every layer is 1-Lipschitz by construction, so the encoder's bound is at most 1 / std; the
bound engine certifies that independently on the exported ONNX, and training keeps it (the rescaling is a
parametrization, not a penalty)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from services.trainer.aol import AOLRescaling, make_aol
from services.trainer.encoders import EncoderConfig, build_encoder
from services.trainer.export import export_onnx
from services.trainer.loop import TrainConfig, train
from services.trainer.moco import MocoConfig

AOL = EncoderConfig(channels=(4, 8), strides=(1, 2), hidden_dim=16, feature_dim=8, layers="aol")


def _engine_bound(encoder, path) -> float:
    pytest.importorskip("onnx")
    from services.perturb.engine import BoundEngine

    export_onnx(encoder, path)
    return BoundEngine.from_onnx(str(path)).lipschitz_bound_l2


def test_every_layer_has_operator_norm_at_most_one_and_the_engine_agrees(tmp_path):
    encoder = build_encoder(AOL)
    with torch.no_grad():  # leave the near-orthogonal start: AOL must bound any weights, not just these
        for layer in encoder.linear_layers()[1:]:
            layer.parametrizations.weight.original.mul_(3.0).add_(torch.randn_like(layer.weight))
    for layer in encoder.linear_layers()[1:]:
        weight = layer.weight.detach().double()
        if weight.ndim == 2:
            assert float(torch.linalg.matrix_norm(weight, ord=2)) <= 1 + 1e-9
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = encoder(x)
    bound = _engine_bound(encoder, tmp_path / "aol.onnx")
    # exporting bakes a copy: the encoder itself keeps its parametrization and its function
    assert torch.equal(encoder(x), before) and hasattr(encoder.linear_layers()[1], "parametrizations")
    # the engine's certified product of per-layer norms: each <= 1, times the normalization's 1 / std
    assert 0.05 / AOL.std < bound <= (1 / AOL.std) * (1 + 1e-4)
    # the same raw weights without the rescaling are far above it: the parametrization is what bounds them
    plain = build_encoder(replace(AOL, layers="plain"))
    with torch.no_grad():
        for target, source in zip(plain.linear_layers()[1:], encoder.linear_layers()[1:], strict=True):
            target.weight.copy_(source.parametrizations.weight.original)
            target.bias.zero_()  # AOL layers are bias-free
    from reaas.onnx_export import torch_to_onnx
    from services.perturb.engine import BoundEngine

    assert BoundEngine.from_onnx(torch_to_onnx(plain.eval(), (1, 28, 28))).lipschitz_bound_l2 > 3 / AOL.std


def test_sampled_jacobians_stay_below_the_bound():
    encoder = build_encoder(AOL).double().eval()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.rand(1, 1, 28, 28, dtype=torch.float64, generator=gen)
        jacobian = torch.autograd.functional.jacobian(lambda v: encoder(v).flatten(), x).reshape(8, -1)
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= 1 / AOL.std + 1e-9


def test_distillation_trains_an_aol_student_and_exports_it(tmp_path, tiny_images):
    teacher = tmp_path / "teacher.onnx"
    export_onnx(build_encoder(replace(AOL, layers="plain")), teacher)
    config = TrainConfig(mode="rrm", epochs=2, batch_size=16, lr=0.05, warmup_steps=1, lam=0.2,
                         penalty="scale_invariant", out_dir=str(tmp_path / "run"), progress=False,
                         log_every=1,
                         encoder=AOL, moco=MocoConfig(proj_dim=8, queue_size=32, momentum=0.9))
    result = train(config, tiny_images, teacher_onnx=str(teacher))
    assert result.history[-1]["mean_objective"] < result.history[0]["mean_objective"]
    assert all(isinstance(layer.parametrizations.weight[0], AOLRescaling)
               for layer in result.encoder.linear_layers()[1:])
    assert _engine_bound(result.encoder, tmp_path / "student.onnx") <= (1 / AOL.std) * (1 + 1e-4)


def test_the_cli_writes_the_layer_kind_on_the_card(tmp_path):
    from services.trainer.__main__ import main

    onnx_path = tmp_path / "cli.onnx"
    rc = main(["--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--train-limit", "256",
               "--enc-channels", "4,8", "--enc-strides", "2,2", "--enc-hidden", "16", "--feature-dim", "8",
               "--moco-k", "64", "--enc-layers", "aol", "--out-dir", str(tmp_path / "cli"), "--no-progress",
               "--threads", "1", "--skip-probe", "--export", str(onnx_path)])
    assert rc == 0
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["architecture"]["layers"] == "aol"
    # features rescaled by feature_scale_factor at export: the bound is that factor / std
    bound = card["feature_scale_factor"] / card["architecture"]["std"]
    assert 0.05 * bound < card["lipschitz_bound_l2"] <= bound * (1 + 1e-4)
    # the feature scale was normalized on the training images (the AOL last layer baked first: rescaling its
    # raw weight would change nothing)
    import onnxruntime as ort

    from services.trainer.data import load_fashion_mnist
    from services.trainer.spectral import feature_spread

    images = load_fashion_mnist("train")[0][:256].numpy()
    features = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        ["features"], {"images": images})[0]
    assert card["feature_scale_factor"] != pytest.approx(1.0)
    spread = float(feature_spread(torch.as_tensor(features, dtype=torch.float64)))
    assert spread == pytest.approx(1.0, rel=1e-3)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="layers must be one of"):
        EncoderConfig(layers="orthogonal")
    with pytest.raises(ValueError, match="without BatchNorm"):
        EncoderConfig(layers="aol", batch_norm=True)
    with pytest.raises(ValueError, match="already parametrized"):
        make_aol(make_aol(torch.nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="groups 1"):
        make_aol(torch.nn.Conv2d(4, 4, 3, groups=2))


def test_caching_the_aol_weights_per_step_changes_nothing(tmp_path, tiny_images, monkeypatch):
    import contextlib

    from services.trainer import loop

    teacher = tmp_path / "teacher.onnx"
    export_onnx(build_encoder(replace(AOL, layers="plain")), teacher)

    def run(name: str):
        config = TrainConfig(mode="rrm", epochs=1, batch_size=16, lr=0.05, warmup_steps=1, lam=0.2,
                             penalty="scale_invariant", out_dir=str(tmp_path / name), progress=False,
                             max_steps_per_epoch=3, encoder=AOL)
        return train(config, tiny_images, teacher_onnx=str(teacher)).encoder.state_dict()

    cached = run("cached")
    monkeypatch.setattr(loop, "weights_cached", lambda config: contextlib.nullcontext())
    uncached = run("uncached")
    assert cached.keys() == uncached.keys()
    for key in cached:
        torch.testing.assert_close(cached[key], uncached[key], rtol=1e-5, atol=1e-6)


def test_maxmin_sorts_each_channel_pair_and_keeps_the_gradient_norm():
    from services.trainer.encoders import MaxMin

    x = torch.tensor([[3.0, -1.0, 1.0, 2.0]])  # pairs (3, 1) and (-1, 2)
    assert MaxMin(4)(x).tolist() == [[3.0, 2.0, 1.0, -1.0]]
    maps = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: MaxMin(6)(v).flatten(), maps[:1]).reshape(96, 96)
    # a permutation matrix almost everywhere: every singular value is 1 (ReLU would zero about half)
    torch.testing.assert_close(torch.linalg.svdvals(jacobian), torch.ones(96, dtype=torch.float64))


def test_an_aol_maxmin_encoder_stays_below_one_over_std():
    encoder = build_encoder(replace(AOL, activation="maxmin")).double().eval()
    with torch.no_grad():
        for layer in encoder.linear_layers()[1:]:
            layer.parametrizations.weight.original.add_(torch.randn_like(layer.weight))
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand(1, 1, 28, 28, dtype=torch.float64, generator=gen)
        jacobian = torch.autograd.functional.jacobian(lambda v: encoder(v).flatten(), x).reshape(8, -1)
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= 1 / AOL.std + 1e-9
    with pytest.raises(ValueError, match="must be even"):
        EncoderConfig(channels=(3, 8), strides=(1, 2), activation="maxmin")
    with pytest.raises(ValueError, match="activation must be one of"):
        EncoderConfig(activation="gelu")
