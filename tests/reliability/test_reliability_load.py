"""Load, reduced: a few clients for a few seconds on loopback, no errors; the pure helpers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reliability.load import LoadSettings, drive, max_growth, memory_growth, percentile_ms, rss_bytes, run


def test_percentiles_and_growth():
    assert percentile_ms([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)
    assert percentile_ms([], 99) == 0.0
    assert memory_growth({"a": 100}, {"a": 110}) == {"a": pytest.approx(0.1)}
    assert max_growth({"a": 0.1, "b": -0.2}) == pytest.approx(0.1)


def test_zero_or_unreadable_rss_is_unmeasured_not_a_pass():
    """A replica whose RSS reads 0 or cannot be read has no growth figure, and the maximum is then
    undefined (None), never 0.0, so the memory goal cannot be met by a missing measurement."""
    growth = memory_growth({"a": 100, "b": 0, "c": None, "d": 100}, {"a": 110, "b": 5, "c": 7, "d": 0})
    assert growth == {"a": pytest.approx(0.1), "b": None, "c": None, "d": None}
    assert max_growth(growth) is None and max_growth({}) is None
    assert rss_bytes(os.getpid()) > 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert rss_bytes(gone.pid) is None


def test_drive_reports_unreadable_memory_as_unmeasured(monkeypatch):
    import reliability.load as load

    settings = LoadSettings(clients=1, seconds=0.2, max_calls_per_client=1)
    monkeypatch.setattr(load, "rss_bytes", lambda pid: 0)  # what a failed /proc read used to give
    got = drive("127.0.0.1:9", lambda channel, rng: None, {"encoder-0": 1, "encoder-1": 2}, settings)
    assert got["max_memory_growth"] is None
    assert got["memory_unmeasured"] == ["encoder-0", "encoder-1"]
    assert got["memory_growth_half_to_end"] == {"encoder-0": None, "encoder-1": None}
    monkeypatch.setattr(load, "rss_bytes", lambda pid: 1000 * pid)
    got = drive("127.0.0.1:9", lambda channel, rng: None, {"encoder-0": 1, "encoder-1": 2}, settings)
    assert got["max_memory_growth"] == 0.0 and got["memory_unmeasured"] == []


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
        assert got["memory_unmeasured"] == [] and got["max_memory_growth"] is not None, got["rss_mib"]
    assert report["load_errors"] == 0 and report["memory_unmeasured"] == []
    assert report["max_memory_growth"] is not None
