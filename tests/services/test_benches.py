"""The benchmark commands run end to end at toy sizes and report every figure the README quotes.

No timing is asserted (CI machines are noisy): only that each figure is there, finite and consistent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import encoder_serving as encoder_bench  # noqa: E402
from benchmarks import perturb_engine as perturb_bench  # noqa: E402


def test_perturb_bench_reports_latency_gap_memory_and_served_latency():
    config = perturb_bench.BenchConfig(images=2, methods=("lipschitz", "ibp", "auto"), crown_images=0,
                                       gap_images=2, rss_images=0, attack_steps=5, attack_restarts=1,
                                       grpc_methods=("lipschitz",), grpc_requests=2)
    report = perturb_bench.run(config)
    for method in config.methods:
        row = report["methods"][method]
        assert row["queries"] == 2 and row["p50_ms"] > 0 and row["mean_image_radius"] > 0
    # AUTO is the best of the sound methods it runs: never below LIPSCHITZ
    radius = {m: report["methods"][m]["mean_image_radius"] for m in config.methods}
    assert radius["auto"] >= radius["lipschitz"]
    assert report["certificate_gap_median"] >= 1.0  # an attack-limited radius bounds every sound one
    assert report["lipschitz_bound_over_sampled"] >= 1.0  # a sampled Jacobian norm never beats the bound
    assert report["peak_rss_mb"] > 0
    served = report["served"]["lipschitz"]
    assert served["same_radii"] and served["requests"] == 2 and math.isfinite(served["served_over_inprocess"])


def test_encoder_bench_reports_throughput_and_batching_speedup():
    report = encoder_bench.run(encoder_bench.BenchConfig(seconds=0.3, batch_images=16, batch_clients=1,
                                                         concurrent_clients=4, intra_op_threads=1,
                                                         untrained_channels=(4, 8), untrained_hidden=16))
    assert report["raw_images_per_s"] > 0 and report["served_images_per_s"] > 0
    ratio = report["served_images_per_s"] / report["raw_images_per_s"]
    assert report["served_over_raw"] == pytest.approx(ratio)
    single = report["concurrent_single_image"]
    assert single["clients"] == 4
    for mode in ("dynamic_batching", "no_batching"):
        assert single[mode]["images_per_s"] > 0 and single[mode]["p99_ms"] >= single[mode]["p50_ms"] > 0
    assert report["execution_provider"] == "CPUExecutionProvider"
    assert "channels [4, 8]" in report["model"]


def test_largest_jacobian_norm_is_the_spectral_norm_of_a_linear_map():
    weight = torch.randn(5, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = np.random.default_rng(0).random((3, 1, 3, 4))
    found = perturb_bench.largest_jacobian_norm(lambda v: v.reshape(len(v), -1) @ weight.T, x)
    assert found == pytest.approx(float(torch.linalg.matrix_norm(weight, ord=2)), rel=1e-12)
