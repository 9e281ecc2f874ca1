"""make gpu-check: the comparison against the float64 reference and the margin, exercised on the CPU."""

from __future__ import annotations

import numpy as np

from services.encoder import gpu_check


def test_without_a_gpu_it_says_so_and_passes(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert gpu_check.main(["--images", "10"]) == 0
    assert "no GPU provider" in capsys.readouterr().out


def test_check_compares_every_precision_and_fails_an_error_above_the_margin(monkeypatch, cnn_onnx):
    # ONNX Runtime runs a session whose CUDA provider is missing on the CPU: the pipeline is the same
    monkeypatch.setattr(
        gpu_check.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).uniform(size=(20, 1, 28, 28)).astype(np.float32)
    rows = gpu_check.check(str(cnn_onnx), x, batch=8)
    assert [r["precision"] for r in rows] == ["float32", "reduced"]
    assert all(r["passed"] and 0 <= r["max_error_over_margin"] < 1 for r in rows)
    assert rows[0]["options"] == {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}

    real = gpu_check._features
    monkeypatch.setattr(gpu_check, "_features", lambda s, im, b: real(s, im, b) + 1.0)  # a broken GPU
    assert not any(r["passed"] for r in gpu_check.check(str(cnn_onnx), x, batch=8))
