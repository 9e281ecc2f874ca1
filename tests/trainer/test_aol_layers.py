"""AOL rescaling on either side: the operator norm of every rescaled layer is at most 1 (exact SVD of the
explicit conv matrix, any stride and padding), and the narrow-side rule keeps a wide layer near norm 1 where
the paper's column rule shrinks it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.trainer.aol import AOLRescaling, make_aol, narrower_side


def _conv_matrix(weight: torch.Tensor, side: int, stride: int, padding: int) -> torch.Tensor:
    """The explicit matrix of x -> conv2d(x, weight) on [in, side, side] inputs (float64)."""
    n_in = weight.shape[1] * side * side
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, weight.shape[1], side, side)
    return F.conv2d(basis, weight, stride=stride, padding=padding).reshape(n_in, -1).T


@pytest.mark.parametrize("side", ["columns", "rows"])
@pytest.mark.parametrize(("c_in", "c_out", "stride", "padding"),
                         [(3, 6, 1, 1), (4, 8, 2, 1), (8, 4, 1, 0), (6, 12, 2, 0)])
def test_rescaled_convolutions_have_operator_norm_at_most_one(side, c_in, c_out, stride, padding):
    gen = torch.Generator().manual_seed(c_in * 7 + stride)
    kernel = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64) * 2.0
    weight = AOLRescaling(side)(kernel)
    norm = float(torch.linalg.matrix_norm(_conv_matrix(weight, 7, stride, padding), ord=2))
    assert 0.2 < norm <= 1.0 + 1e-12
    assert float(torch.linalg.matrix_norm(_conv_matrix(kernel, 7, stride, padding), ord=2)) > 2.0


@pytest.mark.parametrize("side", ["columns", "rows"])
@pytest.mark.parametrize("shape", [(5, 40), (40, 5), (16, 16)])
def test_rescaled_dense_layers_have_operator_norm_at_most_one(side, shape):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.float64) * 3
    assert float(torch.linalg.matrix_norm(AOLRescaling(side)(weight), ord=2)) <= 1.0 + 1e-12


def test_the_narrow_side_keeps_a_wide_layer_near_norm_one():
    """An orthonormal-row [64, 784] matrix (a wide dense layer at AOL's orthogonal start): the row rule leaves
    it exactly as is (norm 1), the column rule shrinks it to a fraction."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(784, 64, generator=gen, dtype=torch.float64))
    wide = q.T.contiguous()  # [64, 784], orthonormal rows
    rows = AOLRescaling("rows")(wide)
    columns = AOLRescaling("columns")(wide)
    assert torch.allclose(rows, wide, atol=1e-12)
    assert float(torch.linalg.matrix_norm(columns, ord=2)) < 0.5


def test_narrower_side_per_layer_and_make_aol_kinds():
    assert narrower_side(torch.nn.Linear(3136, 256)) == "rows"
    assert narrower_side(torch.nn.Linear(256, 512)) == "columns"
    assert narrower_side(torch.nn.Conv2d(16, 32, 3, stride=2)) == "rows"  # 32 / 4 < 16 per input position
    assert narrower_side(torch.nn.Conv2d(1, 16, 3, stride=1)) == "columns"
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.Conv2d(16, 32, 3, stride=2),
                              torch.nn.Flatten(), torch.nn.Linear(32, 8))
    sides = [m.parametrizations.weight[0].side for m in make_aol(net, "aol-narrow") if hasattr(m, "weight")]
    assert sides == ["columns", "rows", "rows"]
    plain = torch.nn.Sequential(torch.nn.Linear(32, 8))
    assert make_aol(plain)[0].parametrizations.weight[0].side == "columns"  # the paper's rule by default
    with pytest.raises(ValueError, match="kind must be"):
        make_aol(torch.nn.Linear(3, 2), "orthogonal")
    with pytest.raises(ValueError, match="side must be"):
        AOLRescaling("diagonal")
