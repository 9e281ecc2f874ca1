"""The REaaS-SC screen: its rows are the client's smoothing answers converted by R_F / L, its CLI runs."""

from __future__ import annotations

import json

import numpy as np
import onnx

from benchmarks.sc_screen import main, screen_rows
from edge_client.smoothing import SmoothingConfig, certify_features, input_rng
from edge_client.training import TrainConfig, train_mlp
from services.trainer.pixel_view import fit_pixel_view


def test_rows_are_smoothing_radii_over_the_lipschitz_bound():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(size=(60, 4)) + 3, rng.normal(size=(60, 4)) - 3]).astype(np.float32)
    labels = np.repeat([0, 1], 60)
    mlp = train_mlp(features, labels, TrainConfig(hidden_widths=(8,), epochs=3, noise_c=1.0))
    config = SmoothingConfig(sigma=0.5, n0=50, n=500)
    rows = screen_rows(mlp, features, labels, np.array([0, 70]), config, lipschitz=2.0, seed=3)
    for row, i in zip(rows, (0, 70), strict=True):
        prediction, feature_radius = certify_features(mlp, features[i], config, input_rng(3, i))
        assert row["prediction"] == prediction and row["label"] == labels[i]
        assert row["radius"] == (feature_radius / 2.0 if prediction >= 0 else -1.0)
        assert row["clean_prediction"] == int(mlp.predict(features[i][None])[0])


def test_cli_screens_an_encoder(tmp_path, capsys):
    from services.trainer.data import load_images

    images, _ = load_images("digits", "train")
    model, _ = fit_pixel_view(None, images.numpy(), threads=1)
    path = tmp_path / "view.onnx"
    onnx.save(model, str(path))
    assert main(["--models", str(path), "--dataset", "digits", "--noise-c", "0.5", "--inputs", "4",
                 "--n", "200",
                 "--epochs", "2", "--threads", "1", "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["num_test"] == 4 and row["noise_c"] == 0.5
    assert 1 - 1e-6 <= row["lipschitz_bound_l2"] <= 1 + 1e-4
    acc = list(row["certified_accuracy"].values())
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))  # non-increasing in the radius
