"""Operator norms and Lipschitz bounds against exact oracles (explicit conv matrices, sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaas.onnx_export import torch_to_onnx
from services.perturb.engine import BoundEngine
from services.perturb.engine.linear_maps import Conv2dMap
from services.perturb.engine.operator_norms import certified_norm
from services.trainer.encoders import EncoderConfig, build_encoder
from services.trainer.spectral import (
    SpectralEstimator,
    conv_operator_norm,
    feature_spread,
    spectral_penalty,
)


def _engine_bound(enc: torch.nn.Module) -> float:
    """The one certified Lipschitz bound: the bound engine's, on the exported encoder."""
    import copy

    return BoundEngine.from_onnx(torch_to_onnx(copy.deepcopy(enc).float(), (1, 28, 28))).lipschitz_bound_l2


def _conv_bound(weight: torch.Tensor, in_shape: tuple[int, int, int], pad: int, stride: int) -> float:
    return certified_norm(Conv2dMap(weight, (stride, stride), (pad,) * 4, in_shape))


def explicit_conv_matrix(weight: torch.Tensor, in_shape: tuple[int, int, int], stride: int, padding: int):
    """The conv's matrix [out_numel, in_numel], built column by column from basis images."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    cols = F.conv2d(basis, weight.double(), stride=stride, padding=padding).reshape(n, -1)
    return cols.T


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_operator_norm_matches_exact_svd(stride):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64)
    in_shape = (2, 6, 6)
    exact = torch.linalg.matrix_norm(explicit_conv_matrix(weight, in_shape, stride, 1), ord=2).item()
    power = conv_operator_norm(weight, in_shape, stride=stride, padding=1, n_iter=500)
    assert power == pytest.approx(exact, rel=1e-6)
    upper = _conv_bound(weight, in_shape, 1, stride)
    assert exact * (1 - 1e-12) <= upper <= 1.25 * exact
    if stride == 2:
        # The polyphase rewrite beats bounding a strided conv by its stride-1 version.
        assert upper < _conv_bound(weight, in_shape, 1, 1)


@pytest.mark.parametrize("stride,size,k", [(2, 7, 3), (2, 8, 4), (3, 9, 3), (2, 5, 5)])
def test_polyphase_bound_dominates_exact_norm(stride, size, k):
    gen = torch.Generator().manual_seed(stride * 100 + size)
    weight = torch.randn(2, 3, k, k, generator=gen, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(explicit_conv_matrix(weight, (3, size, size), stride, 1), ord=2).item()
    upper = _conv_bound(weight, (3, size, size), 1, stride)
    assert exact * (1 - 1e-12) <= upper


@pytest.mark.parametrize("shape", [(1, 16, 3), (2, 3, 16), (1, 5, 9)])
def test_non_square_inputs_are_not_under_estimated(shape):
    """The old trainer bound sized its FFT grid from the width alone: 1.902 against an exact 1.991."""
    gen = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(3, shape[0], 3, 3, generator=gen, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(explicit_conv_matrix(weight, shape, 1, 1), ord=2).item()
    assert exact * (1 - 1e-12) <= _conv_bound(weight, shape, 1, 1) <= 1.1 * exact


def test_difference_of_two_computed_tensors_is_bounded(tmp_path):
    """f = x − relu(0.01·x): the old trainer parser skipped the Sub and reported 0.0100."""
    from services.perturb.engine import UnsupportedModelError
    from services.trainer.probe import certified_lipschitz

    class Net(torch.nn.Module):
        def forward(self, x):
            z = x.flatten(1)
            return z - torch.relu(0.01 * z)

    path = tmp_path / "sub.onnx"
    path.write_bytes(torch_to_onnx(Net(), (1, 4, 4)))
    try:
        bound, _ = certified_lipschitz(str(path))
    except UnsupportedModelError:
        return  # refusing is sound; an under-estimate is not
    x = -torch.rand(8, 1, 4, 4)  # on negative inputs f(x) = x: slope 1
    y = x - 0.01
    with torch.no_grad():
        ratio = ((Net()(x) - Net()(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()
    assert bound >= ratio >= 0.99


def test_estimator_log_norms_converge_to_exact(tiny_encoder_config):
    enc = build_encoder(tiny_encoder_config).double()
    est = SpectralEstimator(enc, n_iter=1, warmup_iter=300)
    est.eval()
    log_norms = est.log_norms()
    layers = enc.linear_layers()
    assert torch.exp(log_norms[0]).item() == pytest.approx(1 / tiny_encoder_config.std)
    conv = layers[1]
    exact = torch.linalg.matrix_norm(explicit_conv_matrix(conv.weight.detach(), (1, 28, 28), 2, 1), ord=2)
    assert torch.exp(log_norms[1]).item() == pytest.approx(exact.item(), rel=1e-4)
    dense = layers[-1].weight.detach()
    assert torch.exp(log_norms[-1]).item() == pytest.approx(
        torch.linalg.matrix_norm(dense, ord=2).item(), rel=1e-4
    )
    # Power iteration estimates from below; the certified product bounds it from above.
    assert np.exp(log_norms.sum().item()) <= _engine_bound(enc) * (1 + 1e-6)


def test_certified_bound_dominates_sampled_ratios(tiny_encoder_config):
    enc = build_encoder(tiny_encoder_config).eval()
    bound = _engine_bound(enc)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    delta = 1e-2 * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        ratio = (enc(x + delta) - enc(x)).norm(dim=1) / delta.flatten(1).norm(dim=1)
    # Gradient ascent on the local ratio: the worst direction found must still respect the bound.
    d = delta.clone().requires_grad_(True)
    for _ in range(20):
        r = ((enc(x + d) - enc(x)).norm(dim=1) / d.flatten(1).norm(dim=1)).sum()
        (g,) = torch.autograd.grad(r, d)
        d = (d + 1e-2 * g / g.flatten(1).norm(dim=1)[:, None, None, None]).detach().requires_grad_(True)
    with torch.no_grad():
        attacked = (enc(x + d) - enc(x)).norm(dim=1) / d.flatten(1).norm(dim=1)
    assert ratio.max().item() <= bound
    assert attacked.max().item() <= bound


def test_penalty_forms_and_scale_invariance(tiny_encoder_config):
    enc = build_encoder(tiny_encoder_config)
    est = SpectralEstimator(enc, warmup_iter=200).eval()
    x = torch.rand(32, 1, 28, 28)
    base_norms, base_feats = est.log_norms().detach(), enc(x).detach()
    with torch.no_grad():
        enc.net[-1].weight.mul_(5.0)
        enc.net[-1].bias.mul_(5.0)
    norms, feats = est.log_norms().detach(), enc(x).detach()
    assert feature_spread(feats).item() == pytest.approx(5 * feature_spread(base_feats).item(), rel=1e-4)
    lam = 0.3
    si = [
        spectral_penalty("scale_invariant", n, f, lam).item()
        for n, f in [(base_norms, base_feats), (norms, feats)]
    ]
    lit = [spectral_penalty("log", n, f, lam).item() for n, f in [(base_norms, base_feats), (norms, feats)]]
    assert si[1] == pytest.approx(si[0], abs=1e-4)
    assert lit[1] - lit[0] == pytest.approx(lam * np.log(5.0), abs=1e-4)
    assert spectral_penalty("none", norms, feats, lam).item() == 0.0
    with pytest.raises(ValueError):
        spectral_penalty("bogus", norms, feats, lam)


def test_batchnorm_folds_into_certified_bound():
    cfg = EncoderConfig(channels=(3,), strides=(2,), hidden_dim=8, feature_dim=4, batch_norm=True)
    enc = build_encoder(cfg)
    with torch.no_grad():
        enc.net[2].running_var.uniform_(0.2, 2.0)
        enc.net[2].weight.uniform_(0.5, 2.0)
    enc.eval()
    x = torch.rand(16, 1, 28, 28)
    y = x + 0.05 * torch.randn_like(x)
    with torch.no_grad():
        ratio = ((enc(x) - enc(y)).norm(dim=1) / (x - y).flatten(1).norm(dim=1)).max().item()
    assert ratio <= _engine_bound(enc)
