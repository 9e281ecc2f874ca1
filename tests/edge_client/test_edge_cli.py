"""The CLI end to end against fake services on Fashion-MNIST: train, certify (resumable), predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edge_fakes import create_fake_server, linear_state

from edge_client.cli import build_parser, main

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


def test_every_subcommand_has_help(capsys):
    for command in ("train", "certify", "predict"):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([command, "--help"])
        assert info.value.code == 0
        assert "--encoder" in capsys.readouterr().out


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the dataset-fashion-mnist package")
def test_train_certify_resume_predict(tmp_path, capsys):
    state = linear_state(feature_dim=16, input_shape=(1, 28, 28), max_batch_size=256)
    state.api_key = "k3y"
    server, port = create_fake_server(state)
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    common = ["--encoder", f"127.0.0.1:{port}", "--api-key-file", str(key_file), "--cache-dir",
              str(tmp_path / "cache")]
    model = tmp_path / "mlp.npz"
    try:
        assert main(["train", *common, "--num-train", "600", "--hidden", "32", "--epochs", "3",
                     "--select-noise-c", "0.5,1", "--out", str(model)]) == 0
        report = json.loads((tmp_path / "mlp.npz.json").read_text())
        assert report["training_queries"] == 600 and report["noise_c"] in (0.5, 1.0)
        served = len(state.calls("Encode"))
        assert main(["train", *common, "--num-train", "600", "--hidden", "32", "--epochs", "2",
                     "--out", str(model)]) == 0
        assert len(state.calls("Encode")) == served  # re-training reads the cache: 0 queries
        assert json.loads((tmp_path / "mlp.npz.json").read_text())["training_queries"] == 0
        capsys.readouterr()

        certify = ["certify", *common, "--model", str(model), "--num-test", "4", "--n", "2000"]
        for method in ("sc", "sc-curve", "bc-crown"):
            assert main([*certify, "--method", method]) == 0
            summary = json.loads(capsys.readouterr().out)
            assert summary["num_test"] == 4
            assert summary["queries_per_test_input"] <= (1 if method == "sc-curve" else 2)
        assert main([*certify, "--method", "bc-crown", "--semantic", "brightness,contrast"]) == 0
        semantic = json.loads(capsys.readouterr().out)["semantic"]
        assert len(state.calls("F2ISemantic")) <= 8  # 1 query per certified input and kind, no more
        for kind in ("brightness", "contrast"):
            assert semantic[kind]["num_test"] == 4
            assert semantic[kind]["queries_per_test_input"] <= 1
        before = len(state.requests)
        assert main([*certify, "--method", "bc-crown", "--semantic", "brightness,contrast"]) == 0
        assert main([*certify, "--method", "sc"]) == 0  # resumed: everything already journaled
        assert all(m.endswith("GetModelInfo") for m, _, _ in state.requests[before:])
        capsys.readouterr()

        assert main(["predict", *common, "--model", str(model), "--num-test", "3", "--smoothed",
                     "--n", "1000"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["index"] for r in lines] == [0, 20, 40]
    finally:
        server.stop(None)


def test_clear_errors(tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert main(["predict", "--encoder", "127.0.0.1:1", "--model", str(model)]) == 2
    assert "error:" in capsys.readouterr().err


def test_semantic_needs_a_known_kind_and_a_feature_radius(tmp_path):
    model = tmp_path / "m.npz"
    with pytest.raises(SystemExit, match="unknown kind"):
        main(["certify", "--model", str(model), "--semantic", "hue"])
    with pytest.raises(SystemExit, match="feature radius"):
        main(["certify", "--model", str(model), "--method", "seaas-sc", "--semantic", "brightness"])


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the dataset-fashion-mnist package")
def test_clear_error_when_the_service_is_down(tmp_path, capsys):
    import numpy as np

    from edge_client.mlp import init_mlp

    model = tmp_path / "m.npz"
    init_mlp(4, (4,), 10, np.zeros(4), 1.0, np.random.default_rng(0)).save(model)
    code = main(["predict", "--encoder", "127.0.0.1:1", "--timeout-s", "0.5", "--model", str(model),
                 "--num-test", "1"])
    assert code == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the dataset-fashion-mnist package")
@pytest.mark.parametrize("baseline", ["seaas-sc", "seaas-ds"])
def test_seaas_baselines_through_the_cli(tmp_path, capsys, baseline):
    if baseline == "seaas-ds":
        pytest.importorskip("torch")
        pytest.importorskip("onnxruntime")
    state = linear_state(feature_dim=8, input_shape=(1, 28, 28), max_batch_size=512)
    server, port = create_fake_server(state)
    common = ["--encoder", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "cache")]
    model = tmp_path / "mlp.npz"
    try:
        assert main(["train", *common, "--num-train", "60", "--hidden", "16", "--epochs", "2",
                     "--baseline", baseline, "--copies", "3", "--denoiser-epochs", "1",
                     "--denoiser-out", str(tmp_path / "dn.onnx"), "--out", str(model)]) == 0
        report = json.loads((tmp_path / "mlp.npz.json").read_text())
        assert report["training_queries"] == (180 if baseline == "seaas-sc" else 60)
        capsys.readouterr()
        assert main(["certify", *common, "--model", str(model), "--method", baseline, "--num-test", "2",
                     "--n0", "10", "--n", "200"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["queries_per_test_input"] == 210
    finally:
        server.stop(None)
