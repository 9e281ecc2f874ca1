"""The AOL CNN is 1-Lipschitz by construction: each layer's exact norm, power iteration and the perturb bound
engine's certified bound all stay below the proven L = 1, and PGD never beats a margin certificate."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jobs.lipschitz_cnn import (  # noqa: E402
    PROVEN_LIPSCHITZ,
    LipschitzConfig,
    build_aol_cnn,
    certify_lipschitz,
    frozen,
    margin_radii,
    train_lipschitz_cnn,
)
from services.trainer.aol import aol_conv_scale  # noqa: E402

SMALL = LipschitzConfig(channels=(4, 8), hidden=16, max_epochs=6, patience=2, batch_size=32,
                        learning_rate=0.01, seed=0)


def _power_iteration(apply, apply_t, shape, steps: int = 300, seed: int = 0) -> float:
    """A lower estimate of ‖A‖₂ from ``steps`` rounds of x <- AᵀA x (float64)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for _ in range(steps):
        x = apply_t(apply(x))
        x = x / x.norm()
    return float(apply(x).norm())


@pytest.mark.parametrize("stride", [1, 2])
def test_aol_conv_has_operator_norm_at_most_one(stride):
    gen = torch.Generator().manual_seed(stride)
    kernel = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    weight = kernel * aol_conv_scale(kernel)[None, :, None, None]
    shape = (1, 3, 12, 12)

    def conv(x):
        return torch.nn.functional.conv2d(x, weight, stride=stride, padding=1)

    out_shape = conv(torch.zeros(shape, dtype=torch.float64)).shape

    def conv_t(y):
        extra = shape[-1] - ((out_shape[-1] - 1) * stride + 1)
        return torch.nn.functional.conv_transpose2d(y, weight, stride=stride, padding=1, output_padding=extra)

    estimate = _power_iteration(conv, conv_t, shape)
    assert 0.3 < estimate <= 1.0 + 1e-9
    # the same kernel without the rescaling is far above 1: the scaling is what bounds it
    raw = _power_iteration(lambda x: torch.nn.functional.conv2d(x, kernel, padding=1),
                           lambda y: torch.nn.functional.conv_transpose2d(y, kernel, padding=1), shape)
    assert raw > 2.0


def test_dense_layers_and_the_whole_network_are_one_lipschitz():
    model = frozen(build_aol_cnn(SMALL, 10, (1, 12, 12)))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            assert float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2)) <= 1.0 + 1e-6
    net = model.double()
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jacobian = torch.autograd.functional.jacobian(lambda v: net(v).flatten(), x).reshape(10, -1)
    assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= PROVEN_LIPSCHITZ + 1e-9


def test_the_bound_engine_certifies_at_most_the_proven_bound():
    pytest.importorskip("onnx")
    from reaas.onnx_export import torch_to_onnx
    from services.perturb.engine import BoundEngine

    model = frozen(build_aol_cnn(SMALL, 10, (1, 12, 12)))
    engine = BoundEngine.from_onnx(torch_to_onnx(model, (1, 12, 12), output_name="logits"))
    # the engine multiplies exact per-layer norms (each <= 1 by construction) plus its float margin ...
    assert 0.05 < engine.lipschitz_bound_l2 <= PROVEN_LIPSCHITZ * (1 + 1e-4)
    # ... and no local slope (the Jacobian's spectral norm at sampled points) exceeds it
    net = model.double()
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.rand(1, 1, 12, 12, dtype=torch.float64, generator=gen)
        jacobian = torch.autograd.functional.jacobian(lambda v: net(v).flatten(), x).reshape(10, -1)
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= engine.lipschitz_bound_l2


def test_margin_radius_by_hand():
    classes, radii = margin_radii(np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 0.5]]))
    assert list(classes) == [0, 1]
    assert radii == pytest.approx([2.0 / math.sqrt(2.0), 0.0])


def test_training_certifies_and_pgd_never_beats_a_certificate():
    from services.trainer.pgd import AttackConfig, pgd_ascent

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 240)
    images = np.clip(rng.random((240, 1, 12, 12)) * 0.3 + labels[:, None, None, None] * 0.3, 0, 1)
    model, report = train_lipschitz_cnn(images.astype(np.float32), labels, SMALL)
    assert 1 <= report.epochs_run <= SMALL.max_epochs
    rows = certify_lipschitz(model, np.arange(40), images[:40], labels[:40])
    assert sum(r["prediction"] == r["label"] for r in rows) > 20  # it learned something
    certified = [r for r in rows if r["radius"] > 0]
    assert certified
    x = torch.as_tensor(images[[r["index"] for r in certified]], dtype=torch.float64)
    predicted = torch.as_tensor([r["prediction"] for r in certified])
    radius = torch.as_tensor([r["radius"] for r in certified], dtype=torch.float64)
    net = model.double()

    def runner_up_lead(v):  # > 0: the attack changed the prediction
        logits = net(v)
        top = logits.gather(1, predicted[:, None])[:, 0]
        others = logits.masked_fill(torch.nn.functional.one_hot(predicted, logits.shape[1]).bool(), -1e9)
        return others.max(dim=1).values - top

    result = pgd_ascent(runner_up_lead, x, radius, AttackConfig(steps=50, restarts=3),
                        torch.Generator().manual_seed(0), box=False)
    assert torch.all(result.value < 0)  # the certified class still leads everywhere the attack went
    assert torch.all(result.delta.flatten(1).norm(dim=1) <= radius * (1 + 1e-9))
