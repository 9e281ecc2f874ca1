"""ONNX export: parity with torch, allowed operators only, dynamic batch, model card, ONNX-side bound."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from services.trainer.encoders import EncoderConfig, build_encoder
from services.trainer.export import export_onnx, sha256_file, write_model_card

ALLOWED = {
    "Sub",
    "Div",
    "Mul",
    "Conv",
    "Relu",
    "BatchNormalization",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Constant",
}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_export_parity_ops_and_dynamic_batch(tmp_path, batch_norm):
    cfg = EncoderConfig(channels=(4, 8), strides=(1, 2), hidden_dim=16, feature_dim=8, batch_norm=batch_norm)
    enc = build_encoder(cfg)
    if batch_norm:
        with torch.no_grad():
            for m in enc.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    enc.eval()
    path = tmp_path / "enc.onnx"
    diff = export_onnx(enc, path)
    assert diff <= 1e-4
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} <= ALLOWED
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["features"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.rand(batch, 1, 28, 28)
        (out,) = session.run(["features"], {"images": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, enc(x).numpy(), atol=1e-4)
    from services.trainer.probe import certified_lipschitz

    bound, method = certified_lipschitz(str(path))
    assert method == "bound_engine"
    with torch.no_grad():
        x = torch.rand(32, 1, 28, 28)
        y = x + 0.05 * torch.randn_like(x)
        ratio = ((enc(x) - enc(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()
    assert ratio <= bound


def test_model_card_has_sha256(tmp_path, tiny_encoder_config):
    path = tmp_path / "m.onnx"
    export_onnx(build_encoder(tiny_encoder_config).eval(), path)
    card_path = write_model_card(path, {"lam": 0.3})
    card = json.loads(card_path.read_text())
    assert card["model_sha256"] == sha256_file(path)
    assert card["lam"] == 0.3 and card["file"] == "m.onnx"
