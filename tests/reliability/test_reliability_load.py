"""Load, reduced: a few clients for a few seconds on loopback, no errors; the pure helpers."""

from __future__ import annotations

import pytest

from reliability.load import LoadSettings, drive, memory_growth, percentile_ms, run


def test_percentiles_and_growth():
    assert percentile_ms([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)
    assert percentile_ms([], 99) == 0.0
    assert memory_growth({"a": 100, "b": 0}, {"a": 110, "b": 5}) == {"a": pytest.approx(0.1)}


def test_load_refuses_anything_but_loopback():
    with pytest.raises(ValueError, match="127.0.0.1"):
        drive("ipv4:10.0.0.1:50051", lambda channel, rng: None, {}, LoadSettings(clients=1, seconds=0.1))


def test_short_load_has_no_errors(stand_in_onnx, tmp_path):
    report = run(stand_in_onnx, tmp_path, LoadSettings(clients=4, seconds=2.0), log=lambda _: None)
    for service in ("encoder", "perturb"):
        got = report[service]
        assert got["calls"] > 0 and got["load_errors"] == 0, got
        assert 0 < got["p50_ms"] <= got["p99_ms"]
        assert set(got["rss_mib"]) == {"start", "half", "end"}
    assert report["load_errors"] == 0
