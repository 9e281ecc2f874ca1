"""SEaaS baselines: every noisy copy is a query; image-space smoothing against a linear oracle; denoiser."""

from __future__ import annotations

import numpy as np
import pytest
from edge_fakes import create_fake_server, linear_state

from edge_client.certification import CertifyConfig, certify_one
from edge_client.mlp import MLP
from edge_client.sdk import ClientConfig, EncoderClient
from edge_client.seaas_baselines import certify_image, fetch_noisy_training_features, noisy_copies
from edge_client.smoothing import ABSTAIN, SmoothingConfig, input_rng


@pytest.fixture
def service():
    state = linear_state(feature_dim=6, max_batch_size=512)
    server, port = create_fake_server(state)
    yield state, EncoderClient(ClientConfig(f"127.0.0.1:{port}"))
    server.stop(None)


def _linear_head(state, seed=0) -> MLP:
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal((2, 6)).astype(np.float32), np.zeros(2, np.float32)
    return MLP((w,), (b,), np.zeros(6, np.float32), 1.0, 1.0)


def test_noisy_training_copies_cost_k_queries_each(service):
    state, encoder = service
    images = np.full((3, 1, 4, 4), 0.5, np.float32)
    copies = noisy_copies(images, 0.25, 4, np.random.default_rng(0))
    assert copies.shape == (12, 1, 4, 4) and copies.min() >= 0 and copies.max() <= 1
    features = fetch_noisy_training_features(encoder, images, 0.25, 5, seed=0)
    assert features.shape == (15, 6) and encoder.usage.queries == 15
    np.testing.assert_array_equal(fetch_noisy_training_features(encoder, images, 0.25, 5, seed=0), features)
    assert not np.array_equal(fetch_noisy_training_features(encoder, images, 0.25, 5, seed=1), features)


def test_image_space_smoothing_is_sound_against_the_linear_oracle(service):
    state, encoder = service
    head = _linear_head(state)
    w = head.weights[0].astype(np.float64) @ state.weights  # composite linear map on pixels: [2, 16]
    normal = (w[0] - w[1]) / np.linalg.norm(w[0] - w[1])
    sigma = 0.02
    config = SmoothingConfig(sigma=sigma, n0=100, n=5_000, batch_size=1_000)
    x0 = np.full(16, 0.5)
    bias = np.array([-(w[0] - w[1]) @ x0, 0.0], dtype=np.float32)  # the boundary passes through x0
    head = MLP(head.weights, (bias,), head.center, 1.0, 1.0)
    on_boundary = x0
    for i, offset in enumerate([1.5 * sigma, -2.0 * sigma]):
        x = (on_boundary + offset * normal).reshape(1, 4, 4)
        assert 0.05 < x.min() and x.max() < 0.95
        margin = (w[0] - w[1]) @ x.ravel() + float(bias[0])
        exact = abs(margin) / np.linalg.norm(w[0] - w[1])
        before = encoder.usage.queries
        cls, radius = certify_image(encoder, head, x.astype(np.float32), config, input_rng(0, i))
        assert encoder.usage.queries - before == config.n0 + config.n
        assert cls in (ABSTAIN, int(margin < 0))
        assert radius <= exact
        if cls != ABSTAIN:
            assert radius > 0.5 * exact


def test_seaas_rows_count_all_noisy_queries(service):
    state, encoder = service
    head = _linear_head(state)
    config = CertifyConfig(method="seaas-sc", n0=50, n=500, image_sigma=0.1)
    row = certify_one(0, np.full((1, 4, 4), 0.5, np.float32), 0, head, encoder, None, config)
    assert row["queries"] == 550 and row["bytes"] > 550 * 64


def test_denoiser_trains_exports_and_runs_torch_free(tmp_path, service):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge_client.seaas_baselines import DenoiserConfig, OnnxDenoiser, export_denoiser_onnx, train_denoiser

    rng = np.random.default_rng(0)
    images = np.clip(rng.random((64, 1, 8, 8)) * 0.2 + np.linspace(0, 0.8, 8)[None, None, None, :], 0, 1)
    images = images.astype(np.float32)
    config = DenoiserConfig(sigma=0.25, depth=3, channels=8, epochs=15, batch_size=32)
    model = train_denoiser(images, config)
    path = tmp_path / "denoiser.onnx"
    export_denoiser_onnx(model, path, (1, 8, 8))
    denoiser = OnnxDenoiser(path)
    noisy = images + 0.25 * rng.standard_normal(images.shape).astype(np.float32)
    denoised = denoiser(noisy)
    import torch

    with torch.no_grad():
        np.testing.assert_allclose(denoised, model(torch.as_tensor(noisy)).numpy(), atol=1e-4)
    assert np.mean((denoised - images) ** 2) < np.mean((noisy - images) ** 2)


def test_denoiser_trains_to_its_validation_plateau():
    pytest.importorskip("torch")
    from edge_client.seaas_baselines import DenoiserConfig, train_denoiser

    rng = np.random.default_rng(1)
    images = np.clip(rng.random((80, 1, 8, 8)) * 0.2 + 0.4, 0, 1).astype(np.float32)
    seen = []
    config = DenoiserConfig(sigma=0.25, depth=3, channels=4, epochs=40, batch_size=16,
                            validation_fraction=0.25, patience=1, min_improvement=0.5,
                            seed=0)  # a 50% bar: the plateau comes early
    train_denoiser(images, config, progress=lambda phase, epoch, value: seen.append((phase, epoch, value)))
    validation = [value for phase, _, value in seen if phase == "validation"]
    assert 2 <= len(validation) < config.epochs  # stopped at the plateau, not at max epochs
    assert sum(phase == "mse" for phase, _, _ in seen) == len(validation)


def test_a_killed_denoiser_training_resumes_from_its_checkpoint_bit_identically(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_client.seaas_baselines import DenoiserConfig, train_denoiser

    images = np.random.default_rng(2).random((48, 1, 8, 8)).astype(np.float32)
    config = DenoiserConfig(sigma=0.25, depth=3, channels=4, epochs=4, batch_size=16,
                            validation_fraction=0.25, patience=4, seed=0)

    def kill(phase: str, epoch: int, value: float) -> None:
        if phase == "validation" and epoch == 1:
            raise KeyboardInterrupt

    reference = train_denoiser(images, config).state_dict()
    with pytest.raises(KeyboardInterrupt):
        train_denoiser(images, config, progress=kill, checkpoint=tmp_path / "dncnn.ckpt")
    trained = []
    resumed = train_denoiser(images, config, checkpoint=tmp_path / "dncnn.ckpt",
                             progress=lambda phase, epoch, value: trained.append((phase, epoch)))
    assert [e for phase, e in trained if phase == "mse"] == [2, 3]  # only the epochs the kill left
    assert all(torch.equal(reference[k], v) for k, v in resumed.state_dict().items())
