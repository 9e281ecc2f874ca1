"""The one client workflow: one way to make and cache training features, one model identity, one way to time
and journal every method, one certificate per new image."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from edge_fakes import SHA_B, create_fake_server, linear_state, small_problem

from edge_client.certification import CertifyConfig
from edge_client.cli import main
from edge_client.mlp import MLP
from edge_client.sdk import ClientConfig, ModelMismatchError
from edge_client.training import TrainConfig
from edge_client.workflow import (
    Downstream,
    DownstreamConfig,
    Subset,
    certify_images,
    certify_subset,
    connect,
    endpoint_configs,
    train_downstream,
)
from reaas.datasets import DataSource

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def fake():
    state = linear_state(feature_dim=8, input_shape=(1, 28, 28), max_batch_size=512)
    server, port = create_fake_server(state)
    yield state, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the dataset-fashion-mnist package")
def test_the_cli_and_the_jobs_share_noisy_training_features_and_their_cost(fake, tmp_path):
    """The CLI and the bench once drew SEaaS-SC noise from different generators under one cache key and the
    CLI stored no fetch cost: whichever ran first decided the other's features, and the bench then
    reported 0 bytes. The key now determines the content, and every entry carries its cost."""
    state, target = fake
    cache = tmp_path / "cache"
    assert main(["train", "--encoder", target, "--cache-dir", str(cache), "--num-train", "20",
                 "--hidden", "8", "--epochs", "1", "--baseline", "seaas-sc", "--copies", "3", "--seed", "0",
                 "--out", str(tmp_path / "mlp.npz")]) == 0
    cli_report = json.loads((tmp_path / "mlp.npz.json").read_text())
    fetched = len(state.calls("Encode"))

    images, labels = DataSource().load("train")
    config = DownstreamConfig(baseline="seaas-sc", copies=3, image_sigma=0.25,
                              train=TrainConfig(hidden_widths=(8,), epochs=1, seed=0))
    encoder, _ = connect(ClientConfig(target))
    job = train_downstream(encoder, images[:20], labels[:20], config, cache_dir=cache,
                           dataset="fashion-mnist", num_classes=10)
    assert len(state.calls("Encode")) == fetched  # the job read the CLI's entry
    assert job.features_cached and job.training_queries == 60 and job.training_bytes > 0
    assert (job.training_queries, job.training_bytes) == (cli_report["training_queries"],
                                                          cli_report["training_bytes"])
    fresh = train_downstream(encoder, images[:20], labels[:20], config, num_classes=10)  # no cache
    assert not fresh.features_cached
    assert job.features_sha256 == fresh.features_sha256 == cli_report["features_sha256"]
    assert fresh.training_bytes == job.training_bytes
    assert job.mlp.sha256 == fresh.mlp.sha256  # same features, same seed: the same model


def test_reaas_training_reports_what_fetching_cost_also_from_the_cache(fake, tmp_path):
    state, target = fake
    rng = np.random.default_rng(0)
    images = rng.random((40, 1, 28, 28), dtype=np.float32)
    labels = np.arange(40) % 3
    config = DownstreamConfig(noise_c_grid=(0.5,), train=TrainConfig(hidden_widths=(8,), epochs=1))
    encoder, _ = connect(ClientConfig(target))
    batches = []
    first = train_downstream(encoder, images, labels, config, cache_dir=tmp_path, dataset="mine",
                             fetch_batch=16, on_fetch=batches.append)
    assert batches == [16, 32, 40] and not first.features_cached
    again = train_downstream(encoder, images, labels, config, cache_dir=tmp_path, dataset="mine")
    assert again.features_cached and len(state.calls("Encode")) == 3
    assert (again.training_queries, again.training_bytes) == (40, first.training_bytes)
    assert first.training_bytes > 0
    assert again.mlp.sha256 == first.mlp.sha256 and again.noise_c == 0.5
    with pytest.raises(ValueError, match="dataset"):
        train_downstream(encoder, images, labels, config, cache_dir=tmp_path)


def test_one_mlp_identity(tmp_path):
    _, _, model = small_problem()
    path = tmp_path / "m.npz"
    model.save(path)
    assert MLP.load(path).sha256 == model.sha256
    changed = [replace(model, input_scale=model.input_scale * 2), replace(model, spread=model.spread * 2),
               replace(model, center=model.center + 1),
               replace(model, biases=(model.biases[0] + 1, *model.biases[1:]))]
    assert len({model.sha256, *(m.sha256 for m in changed)}) == 5
    downstream = Downstream(model, 0.5, 12, 12, 999, "a" * 64)
    downstream.save(path)
    loaded = Downstream.load(path)
    assert loaded.mlp.sha256 == model.sha256 and loaded == replace(downstream, mlp=loaded.mlp)
    assert json.loads((tmp_path / "m.npz.json").read_text())["mlp_sha256"] == model.sha256


def _downstream(state, noise_c: float = 0.5) -> tuple[Downstream, Subset]:
    """The small problem's MLP, trained (it says) on the fake encoder, and its 12 labelled inputs."""
    images, labels, model = small_problem()
    return Downstream(model, noise_c, 12, 12, 0, state.sha256), Subset(np.arange(12), images, labels)


@pytest.mark.parametrize("method", ["bc-crown", "sc", "sc-curve", "seaas-sc"])
def test_every_method_is_journaled_and_timed_the_same_way(tmp_path, method):
    state = linear_state()
    server, port = create_fake_server(state)
    try:
        downstream, subset = _downstream(state)
        encoder, perturb = connect(ClientConfig(f"127.0.0.1:{port}"))
        config = CertifyConfig(method=method, n0=20, n=200, image_sigma=0.1)
        certified = certify_subset(downstream, subset, encoder, perturb, config, tmp_path)
        assert certified.journal.parent == tmp_path and certified.journal.name.startswith(f"{method}-")
        header = json.loads(certified.journal.read_text().splitlines()[0])["header"]
        assert header["mlp_sha256"] == downstream.mlp.sha256 and header["config"]["noise_c"] == 0.5
        for row in certified.rows:
            assert row["seconds"] >= row["service_seconds"] > 0 and row["client_seconds"] >= 0
            assert row["client_seconds"] + row["service_seconds"] == pytest.approx(row["seconds"])
        summary = certified.summary
        assert summary["service_seconds_per_test_input"] > 0 and summary["queries_per_training_input"] == 1
        before = len(state.requests)
        again = certify_subset(downstream, subset, encoder, perturb, config, tmp_path)
        assert again.rows == certified.rows and len(state.requests) == before  # resumed: no query
    finally:
        server.stop(None)


def test_certify_images_gives_a_label_or_an_abstention(fake):
    state, target = fake
    rng = np.random.default_rng(1)
    images = rng.random((6, 1, 28, 28), dtype=np.float32)
    encoder, perturb = connect(ClientConfig(target))
    features = encoder.encode(images)
    from edge_client.mlp import feature_spread, init_mlp

    model = init_mlp(8, (8,), 3, features.mean(axis=0), feature_spread(features), rng)
    downstream = Downstream(model, 0.5, encoder_sha256=state.sha256)
    bc = certify_images(downstream, images, encoder, perturb, CertifyConfig(method="bc-crown"))
    assert [c.label for c in bc] == list(model.predict(features))
    for c in bc:  # the fake perturb answers R_F / sigma_max: the exact radius of a linear encoder
        assert c.radius <= c.feature_radius / state.sigma_max and c.queries == (2 if c.feature_radius else 1)
    sc = certify_images(downstream, images, encoder, perturb, CertifyConfig(n=500))
    assert len(sc) == 6 and all(c.label is None or c.radius >= 0 for c in sc)
    # A two-class head whose boundary passes through the first image's features: the smoothed classifier
    # sees two equally likely classes there and must abstain.
    v = rng.standard_normal(8).astype(np.float32)
    on_boundary = float(v @ features[0])
    head = MLP((np.stack([v, -v]),), (np.array([-on_boundary, on_boundary], np.float32),),
               np.zeros(8, np.float32), 1.0, 1.0)
    [abstained] = certify_images(replace(downstream, mlp=head), images[:1], encoder, perturb,
                                 CertifyConfig(n0=50, n=200))
    assert abstained.label is None and abstained.radius == 0.0 and abstained.queries == 1
    with pytest.raises(ModelMismatchError, match="trained on features of encoder"):
        certify_images(replace(downstream, encoder_sha256=SHA_B), images, encoder, perturb)
    with pytest.raises(ValueError, match="noise level"):
        certify_images(replace(downstream, noise_c=None), images, encoder, perturb)


def test_endpoint_configs_read_make_up_endpoints(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# name key\nmain s3cret\n")
    endpoints = {"services": {"encoder": {"target": "ipv4:127.0.0.1:1,127.0.0.1:2"},
                              "perturb": {"target": "127.0.0.1:3"}},
                 "api_key_file": str(keys), "model_sha256": "c" * 64}
    encoder, perturb = endpoint_configs(endpoints, timeout_s=7.0)
    assert (encoder.target, perturb.target) == ("ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3")
    assert encoder.api_key == perturb.api_key == "s3cret" and encoder.timeout_s == 7.0
    assert encoder.expected_model_sha256 == "c" * 64
