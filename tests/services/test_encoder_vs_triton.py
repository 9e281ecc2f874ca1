"""``benchmarks.encoder_serving --peer triton``: every field of the JSON report, at toy sizes; no timing.

The real peer needs an interpreter with nvidia-pytriton (``make bench-triton`` builds ``.venv-triton``);
without one that test skips, and a stand-in peer (our own server's KServe endpoint, which takes the same
byte-identical ModelInfer requests) runs the whole report path instead.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest

pytest.importorskip("torch")

from benchmarks import encoder_serving as bench  # noqa: E402
from benchmarks import serving  # noqa: E402

TOY = ["--seconds", "0.2", "--peer-concurrency", "1,2", "--intra-op-threads", "1",
       "--untrained-channels", "4,8", "--untrained-hidden", "16", "--scaling-workers", "1,2"]


def _check_report(report: dict, concurrency=("1", "2")) -> None:
    assert set(report["concurrency"]) == set(concurrency)
    for row in report["concurrency"].values():
        for server in ("ours_encode", "ours_kserve", "triton"):
            r = row[server]
            assert r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    for ratios in ("ours_over_triton", "encode_over_triton", "kserve_over_triton", "p99_ours_over_triton"):
        assert set(report[ratios]) == set(concurrency)
        assert all(math.isfinite(v) and v > 0 for v in report[ratios].values())
    for c in concurrency:
        assert report["ours_over_triton"][c] == min(report["encode_over_triton"][c],
                                                    report["kserve_over_triton"][c])
    check = report["load_generator_check"]
    assert check["processes"] == 2
    assert check["ours_kserve_two_over_one"] > 0 and check["triton_two_over_one"] > 0
    scaling = report["scaling"]
    assert set(scaling["requests_per_s"]) == {"1", "2"} and scaling["over_first"]["1"] == 1
    assert report["workers"] == 1 and report["intra_op_threads"] == 1


def test_peer_report_has_every_field_with_a_stand_in_peer(monkeypatch, capsys):
    @contextlib.contextmanager
    def stand_in(model, python, flags=()):
        with serving.serve("encoder", model, ["--intra-op-threads", "1"]) as port:
            yield port

    monkeypatch.setattr(bench, "serve_triton_peer", stand_in)
    assert bench.main([*TOY, "--peer", "triton", "--json"]) == 0
    _check_report(json.loads(capsys.readouterr().out))


def test_peer_without_pytriton_says_so_and_exits_2(tmp_path, capsys):
    code = bench.main([*TOY, "--peer", "triton", "--peer-python", str(tmp_path / "no-python")])
    assert code == 2 and "make bench-triton" in capsys.readouterr().err


def test_peer_report_against_real_triton(capsys):
    try:
        serving.check_peer_python(serving.TRITON_VENV_PYTHON)
    except serving.PeerUnavailable as exc:
        pytest.skip(f"no PyTriton interpreter: {exc}")
    assert bench.main([*TOY, "--peer", "triton", "--json"]) == 0
    _check_report(json.loads(capsys.readouterr().out))
