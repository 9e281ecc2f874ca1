"""The SDK and the REaaS paths against the real Encoder and Perturb services (linear ONNX encoder).

Skipped when the services or torch are not importable. For f(x) = W x the exact image radius of a feature
radius R_F is R_F / ||W||_2; every answer must be at most that (sound) and close to it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
encoder_server = pytest.importorskip("services.encoder.server")
perturb_server = pytest.importorskip("services.perturb.server")

from real_services import serving_linear  # noqa: E402

from edge_client.certification import CertifyConfig, journal_header, run_certification  # noqa: E402
from edge_client.journal import Journal  # noqa: E402
from edge_client.mlp import feature_spread, init_mlp  # noqa: E402
from edge_client.sdk import ClientConfig, EncoderClient, ModelPin, PerturbClient  # noqa: E402
from edge_client.semantic import LEVELS, run_semantic, summarize_semantic  # noqa: E402


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    weight = np.random.default_rng(1).normal(size=(6, 784)).astype(np.float32) / 28.0
    card = {"lipschitz_bound_l2": 3.5, "feature_spread": 0.7}
    with serving_linear(tmp_path_factory.mktemp("real"), weight, "k3y-edge", card) as (encoder, perturb):
        yield weight.astype(np.float64), encoder, perturb


def _clients(enc_target, per_target):
    pin = ModelPin()
    encoder = EncoderClient(ClientConfig(enc_target, api_key="k3y-edge"), pin=pin)
    perturb = PerturbClient(ClientConfig(per_target, api_key="k3y-edge"), pin=pin)
    return encoder, perturb


def test_sdk_against_real_services(services):
    weight, enc_target, per_target = services
    encoder, perturb = _clients(enc_target, per_target)
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    features = encoder.encode(images)
    np.testing.assert_allclose(features, images.reshape(5, -1) @ weight.T, rtol=1e-4, atol=1e-5)
    sigma_max = np.linalg.norm(weight, 2)
    feature_radii = np.array([0.05, 0.1, 0.2, 0.5, 1.0])
    radii, methods = perturb.f2i(images, feature_radii)
    exact = feature_radii / sigma_max
    assert np.all(radii <= exact) and np.all(radii >= 0.9 * exact), (radii, exact, methods)
    curve = perturb.curve(images[:2])
    np.testing.assert_allclose(curve.features, features[:2], rtol=1e-4, atol=1e-5)
    assert encoder.pin.sha256 == perturb.pin.sha256
    assert encoder.usage.queries == 5 and perturb.usage.queries == 7


def _random_problem(encoder, num_images: int, seed: int):
    """(test images [N, 1, 28, 28], a random MLP on the served features, its own predictions as labels)."""
    rng = np.random.default_rng(seed)
    images = rng.random((num_images, 1, 28, 28), dtype=np.float32)
    features = encoder.encode(rng.random((64, 1, 28, 28), dtype=np.float32))
    model = init_mlp(6, (16,), 3, features.mean(axis=0), feature_spread(features), rng)
    return images, model, model.predict(encoder.encode(images))


@pytest.mark.parametrize("method", ["bc-crown", "sc", "sc-curve"])
def test_reaas_paths_against_real_services(services, tmp_path, method):
    weight, enc_target, per_target = services
    encoder, perturb = _clients(enc_target, per_target)
    images, model, labels = _random_problem(encoder, 4, seed=2)
    config = CertifyConfig(method=method, n=2_000, noise_c=0.5)
    journal = Journal(tmp_path / "j.jsonl", journal_header(config, encoder.pin.sha256, model))
    rows = run_certification(journal, list(range(4)), images, labels, model, encoder, perturb, config)
    sigma_max = np.linalg.norm(weight, 2)
    for row in rows:
        assert row["radius"] <= row["feature_radius"] / sigma_max
        assert row["queries"] <= (1 if method == "sc-curve" else 2)


@pytest.mark.parametrize("kind", ["brightness", "contrast"])
def test_semantic_certificates_against_the_closed_form(services, tmp_path, kind):
    """f(x) = W x: f(x + b·1) − f(x) = b·W1 and f(c·x) − f(x) = (c − 1)·Wx, so the exact ranges are
    R_F / ‖W1‖₂ and R_F / ‖Wx‖₂. The client's semantic rows must not exceed them, come within 5%, never
    fall under the ℓ2-implied floor, and a resumed run must repeat no query."""
    weight, enc_target, per_target = services
    encoder, perturb = _clients(enc_target, per_target)
    images, model, labels = _random_problem(encoder, 3, seed=3)
    config = CertifyConfig(method="bc-crown")
    header = journal_header(config, encoder.pin.sha256, model)
    rows = run_certification(Journal(tmp_path / "j.jsonl", header), [0, 1, 2], images, labels, model,
                             encoder, perturb, config)
    by_index = {i: images[i] for i in range(3)}
    journal_path = tmp_path / f"j.{kind}.jsonl"
    semantic_rows = run_semantic(Journal(journal_path, {**header, "semantic": kind}), rows, by_index,
                                 perturb, kind, l2_unclipped=True)
    for row in semantic_rows:
        x = images[row["index"]].reshape(-1).astype(np.float64)
        direction = weight @ (np.ones_like(x) if kind == "brightness" else x)
        exact = row["feature_radius"] / np.linalg.norm(direction)
        assert row["feature_radius"] > 0 and row["queries"] == 1
        # within 5%: the proven float32 margin of a 784-term dot product costs ~3% of R_F here
        assert 0.95 * exact <= row["semantic"] <= row["certified"] <= exact, (row, exact)
        assert row["certified"] >= row["l2_implied"]
        assert row["l2_implied"] == pytest.approx(row["l2_radius"] / (28.0 if kind == "brightness"
                                                                      else np.linalg.norm(x)))
    before = perturb.usage.queries
    again = run_semantic(Journal(journal_path, {**header, "semantic": kind}), rows, by_index, perturb, kind,
                         l2_unclipped=True)
    assert again == semantic_rows and perturb.usage.queries == before
    summary = summarize_semantic(semantic_rows, LEVELS[kind])
    assert summary["num_test"] == 3 and summary["queries_per_test_input"] == 1
    assert summary["median_ratio_over_l2_implied"] >= 1.0
