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
        again = json.loads((tmp_path / "mlp.npz.json").read_text())
        assert again["features_cached"] and again["training_queries"] == 600  # what fetching them cost
        assert again["training_bytes"] == report["training_bytes"] > 0
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


def test_help_says_what_the_test_subset_is(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["certify", "--help"])
    text = capsys.readouterr().out
    assert "≡ 0 mod 20" in text and "REFERENCE" not in text


@pytest.fixture
def trained(tmp_path):
    """A fake 28x28 encoder and a model saved as `train` saves it: (address, model path, fake state)."""
    import numpy as np

    from edge_client.mlp import feature_spread, init_mlp
    from edge_client.workflow import Downstream

    state = linear_state(feature_dim=8, input_shape=(1, 28, 28), max_batch_size=256)
    server, port = create_fake_server(state)
    rng = np.random.default_rng(0)
    features = state.features(rng.random((64, 1, 28, 28), dtype=np.float32))
    model = init_mlp(8, (8,), 3, features.mean(axis=0), feature_spread(features), rng)
    path = tmp_path / "mlp.npz"
    Downstream(model, 0.5, 64, 64, 1000, state.sha256).save(path)
    yield f"127.0.0.1:{port}", path, state
    server.stop(None)


def _certify_images(target: str, model: Path, images: Path, *extra: str) -> int:
    return main(["certify", "--encoder", target, "--model", str(model), "--images", str(images), "--n", "500",
                 *extra])


def test_certify_your_own_images(trained, tmp_path, capsys):
    import numpy as np

    target, model, state = trained
    rng = np.random.default_rng(1)
    array = tmp_path / "mine.npy"
    np.save(array, (rng.random((3, 28, 28)) * 255).astype(np.uint8))  # uint8, channel left out
    assert _certify_images(target, model, array, "--method", "bc-crown") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image\tlabel\tradius_l2" and len(lines) == 4
    for k, line in enumerate(lines[1:]):
        name, label, radius = line.split("\t")
        assert name == f"mine.npy[{k}]" and label in {"0", "1", "2"} and float(radius) >= 0

    pytest.importorskip("PIL")
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(folder / name)  # RGB: greyed
    (folder / "notes.txt").write_text("not an image")
    assert _certify_images(target, model, folder) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["a.jpg", "b.png"]
    assert all((label == "abstain") == (radius == "-") for _, label, radius in rows)


def test_images_of_the_wrong_shape_or_range_are_one_error_line(trained, tmp_path, capsys):
    import numpy as np

    target, model, _ = trained
    cases = {"shape": np.zeros((2, 32, 32), np.float32), "[0, 1]": np.full((2, 1, 28, 28), 255.0, np.float32),
             "int64": np.zeros((2, 28, 28), np.int64)}
    for expected, array in cases.items():
        path = tmp_path / f"{expected[:5]}.npy"
        np.save(path, array)
        assert _certify_images(target, model, path) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and expected in err and "Traceback" not in err, err
    assert _certify_images(target, model, tmp_path / "missing") == 2
    assert "no such file" in capsys.readouterr().err
    pytest.importorskip("PIL")
    from PIL import Image

    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "x.png")
    assert _certify_images(target, model, folder) == 2
    assert "64x64 pixels, but the encoder takes 28x28" in capsys.readouterr().err
