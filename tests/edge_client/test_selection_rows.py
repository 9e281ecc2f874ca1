"""SEaaS tunes its image sigma on exactly the training rows REaaS scores its noise level on."""

from __future__ import annotations

import numpy as np
from edge_fakes import create_fake_server, linear_state

from edge_client import training
from edge_client.sdk import ClientConfig, EncoderClient
from edge_client.training import TrainConfig, selection_rows, split_train_validation
from edge_client.workflow import DownstreamConfig, train_downstream


def test_selection_rows_are_the_rows_reaas_selects_on(monkeypatch):
    state = linear_state(feature_dim=4, input_shape=(1, 2, 2))
    server, port = create_fake_server(state)
    num = 300
    images = np.zeros((num, 1, 2, 2), np.float32)
    images[:, 0, 0, 0] = np.arange(num) / num  # pixel 0 names the row; features = (k / num) * W[:, 0]
    labels = np.arange(num) % 3
    seen = {}

    def spy(features, labels, candidates, validation_fraction=0.1, validation_size=200, smoothing_n=2_000,
            alpha=0.001, seed=0):
        seen.update(features=np.asarray(features, np.float64), fraction=validation_fraction, seed=seed,
                    size=validation_size)
        return candidates[0], []

    monkeypatch.setattr(training, "select_hyperparameters", spy)
    try:
        encoder = EncoderClient(ClientConfig(f"127.0.0.1:{port}"))
        config = DownstreamConfig(noise_c_grid=(0.5, 1.0), selection_images=120, validation_fraction=0.25,
                                  train=TrainConfig(hidden_widths=(4,), epochs=1, seed=3))
        train_downstream(encoder, images, labels, config)
    finally:
        server.stop(None)
    column = state.weights[:, 0]
    rows = np.rint(num * seen["features"] @ column / (column @ column)).astype(np.int64)  # REaaS's subset
    _, val_idx = split_train_validation(len(rows), seen["fraction"], seen["seed"])
    train_rows, val_rows = selection_rows(num, 120, 0.25, seen["size"], seed=3)
    np.testing.assert_array_equal(val_rows, rows[val_idx[:seen["size"]]])
    assert set(train_rows) | set(val_rows) <= set(rows) and not set(train_rows) & set(val_rows)
