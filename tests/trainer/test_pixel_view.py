"""The pixel view beside an encoder's features: principal directions against an SVD, the composed ONNX
against the concatenation it stands for, its model card and CLI, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_helpers import export_encoder

from benchmarks.encoder_pareto import describe
from edge_client.mlp import feature_spread as spread
from services.trainer.encoders import EncoderConfig, untrained_encoder
from services.trainer.pixel_view import (
    PixelViewConfig,
    compose,
    fit_pixel_view,
    main,
    principal_directions,
    run_onnx,
    view_weight,
)


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low_rank = rng.normal(size=(n, 3)) @ rng.normal(size=(3, 784))  # most variance in 3 directions
    return np.clip(0.5 + 0.05 * low_rank + 0.01 * rng.normal(size=(n, 784)), 0, 1).reshape(n, 1, 28, 28)


@pytest.fixture
def base_model(tmp_path) -> onnx.ModelProto:
    encoder = untrained_encoder(EncoderConfig(channels=(4, 8), strides=(2, 2), hidden_dim=16, feature_dim=8))
    return onnx.load(str(export_encoder(encoder, tmp_path / "base.onnx")))


def test_principal_directions_span_the_top_singular_subspace():
    images = _images(300)
    mean, top = principal_directions(images, 3)
    flat = images.reshape(300, -1)
    assert np.allclose(mean, flat.mean(0))
    assert np.allclose(top @ top.T, np.eye(3), atol=1e-10)
    _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
    assert np.allclose(top @ vt[:3].T @ vt[:3], top, atol=1e-8)  # same subspace as the SVD's
    assert np.all(top[np.arange(3), np.abs(top).argmax(1)] > 0)  # deterministic signs


def test_composed_encoder_is_the_scaled_view_then_the_base_features(base_model):
    images = _images(64).astype(np.float32)
    mean, top = principal_directions(images, 5)
    composed = compose(base_model, mean, top, 0.37)
    out = run_onnx(composed, images)
    base = run_onnx(base_model, images)
    view = 0.37 * (images.reshape(64, -1).astype(np.float64) - mean) @ top.T
    assert out.shape == (64, 5 + base.shape[1])
    assert np.abs(out[:, :5] - view).max() < 1e-5
    assert np.abs(out[:, 5:] - base).max() < 1e-6
    assert [o.name for o in composed.graph.output] == ["features"]
    assert composed.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 5 + base.shape[1]


def test_fit_scales_the_view_to_the_requested_spread(base_model):
    images = _images(200)
    composed, fitted = fit_pixel_view(base_model, images, PixelViewConfig(components=4, view_spread=3.0))
    out = run_onnx(composed, images.astype(np.float32))
    assert spread(out[:, :4]) == pytest.approx(3.0 * spread(out[:, 4:]), rel=1e-4)
    assert fitted["parity"] <= 1e-4 and fitted["base_dim"] == 8
    mean, top = principal_directions(images, 4)
    assert fitted["weight"] == pytest.approx(view_weight(images, out[:, 4:], mean, top, 3.0), rel=1e-4)


def test_bad_input_is_refused_with_a_reason(base_model):
    with pytest.raises(ValueError, match="components"):
        PixelViewConfig(components=0)
    with pytest.raises(ValueError, match="view_spread"):
        PixelViewConfig(view_spread=-1.0)
    with pytest.raises(ValueError, match="exceeds the pixel count"):
        principal_directions(_images(10), 785)
    two_outputs = onnx.ModelProto()
    two_outputs.CopyFrom(base_model)
    two_outputs.graph.output.append(two_outputs.graph.output[0])
    mean, top = principal_directions(_images(20), 2)
    with pytest.raises(ValueError, match="exactly one input and one output"):
        compose(two_outputs, mean, top, 1.0)


def test_cli_writes_the_encoder_and_a_card_the_ledger_can_label(base_model, tmp_path, capsys):
    base = tmp_path / "base.onnx"
    base.with_suffix(".json").write_text(json.dumps({
        "model_sha256": "x", "command": "python -m services.trainer --mode rrm",
        "training": {"mode": "rrm", "lam": 0.2, "epochs": 60, "teacher": "t.onnx"},
        "architecture": {"family": "ConvEncoder", "channels": [16, 32, 64], "layers": "plain"}}))
    out = tmp_path / "composed.onnx"
    assert main(["--base", str(base), "--export", str(out), "--dataset", "digits", "--components", "16",
                 "--threads", "1"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"]["family"] == "PixelView"
    assert card["output"]["shape"] == ["batch", 16 + 8]
    assert 0 < card["lipschitz_bound_l2"] < float("inf") and 0 < card["linear_probe_accuracy"] <= 1
    assert card["training"]["base_command"] == "python -m services.trainer --mode rrm"
    assert describe(card) == "distilled λ=0.2 60 ep + PCA-16 view ×4"
    with pytest.raises(SystemExit, match="must differ"):
        main(["--base", str(base), "--export", str(base)])


def test_the_view_alone_is_a_1_lipschitz_encoder(tmp_path, capsys):
    from services.perturb.engine import BoundEngine

    images = _images(100).astype(np.float32)
    model, fitted = fit_pixel_view(None, images, PixelViewConfig(components=6))
    mean, top = principal_directions(images, 6)
    assert np.abs(run_onnx(model, images) - (images.reshape(100, -1) - mean) @ top.T).max() < 1e-5
    assert fitted["weight"] == 1.0 and fitted["base_dim"] == 0
    assert 1 - 1e-6 <= BoundEngine(model).lipschitz_bound_l2 <= 1 + 1e-4  # orthonormal rows: exactly 1
    out = tmp_path / "view.onnx"
    assert main(["--export", str(out), "--dataset", "digits", "--components", "16", "--threads", "1",
                 "--skip-probe"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"]["base"] is None and card["output"]["shape"] == ["batch", 16]
    assert describe(card) == "PCA-16 view alone (no learned features)"


def test_mismatched_or_constant_images_are_refused_with_a_reason(base_model):
    small = np.random.default_rng(0).random((20, 1, 8, 8))
    mean, top = principal_directions(small, 3)
    with pytest.raises(ValueError, match="64 pixels.*784"):
        compose(base_model, mean, top, 1.0)
    with pytest.raises(ValueError, match="no view scale can be fitted"):
        fit_pixel_view(base_model, np.full((10, 1, 28, 28), 0.5), PixelViewConfig(components=2))
