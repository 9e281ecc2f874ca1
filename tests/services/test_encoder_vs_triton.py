"""``benchmarks.encoder_serving --peer triton``: every field of the JSON report, at toy sizes; no timing.

The real peer needs an interpreter with nvidia-pytriton (``make bench-triton`` builds ``.venv-triton``);
without one that test skips, and a stand-in peer (our own server's KServe endpoint, which takes the same
byte-identical ModelInfer requests) runs the whole report path instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

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
    assert report["ours_intra_op_threads_per_worker"] == 1


def test_peer_report_has_every_field_with_a_stand_in_peer(monkeypatch, capsys):
    @contextlib.contextmanager
    def stand_in(model, python, flags=()):
        with serving.serve("encoder", model, ["--intra-op-threads", "1"]) as port:
            yield port

    monkeypatch.setattr(bench, "serve_triton_peer", stand_in)
    assert bench.main([*TOY, "--peer", "triton", "--json"]) == 0
    _check_report(json.loads(capsys.readouterr().out))


def test_peer_report_with_h2load_has_every_field(monkeypatch, capsys):
    import shutil

    if shutil.which("h2load") is None:
        pytest.skip("h2load not installed (apt-get install nghttp2-client; `make test` installs it)")

    @contextlib.contextmanager
    def stand_in(model, python, flags=()):
        with serving.serve("encoder", model, ["--intra-op-threads", "1"]) as port:
            yield port

    monkeypatch.setattr(bench, "serve_triton_peer", stand_in)
    assert bench.main([*TOY, "--peer", "triton", "--load-generator", "h2load", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    _check_report(report)
    assert report["load_generator"] == "h2load"


def test_peer_without_pytriton_says_so_and_exits_2(tmp_path, capsys):
    code = bench.main([*TOY, "--peer", "triton", "--peer-python", str(tmp_path / "no-python")])
    assert code == 2 and "make bench-triton" in capsys.readouterr().err


def test_peer_report_against_real_triton(capsys):
    try:
        serving.check_peer_python(serving.TRITON_VENV_PYTHON)
    except serving.PeerUnavailable as exc:
        pytest.skip(f"no PyTriton interpreter: {exc}")
    code = bench.main([*TOY, "--peer", "triton", "--json"])
    if code == 2:  # the interpreter imports PyTriton, but its server did not come up (a third-party start)
        message = capsys.readouterr().err.strip()
        assert "Triton peer" in message
        pytest.skip(f"the real Triton peer did not start: {message[-300:]}")
    assert code == 0
    _check_report(json.loads(capsys.readouterr().out))


H2LOAD_SUMMARY = """finished in 601.49ms, 808.00 req/s, 524.89KB/s
requests: 404 total, 404 started, 404 done, 404 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 404 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 262.45KB (268745) total, 1.55KB (1584) headers (space savings 95.91%), 282.88KB (289668) data
"""


def test_h2load_summary_and_log_parse_against_hand_computed_values():
    from benchmarks import load

    log = [f"{1_000_000 + i}\t200\t{1000 * (i + 1)}" for i in range(100)]  # 1, 2, ..., 100 ms
    result = load.parse_h2load(H2LOAD_SUMMARY, log, seconds=0.5)
    assert result["requests_per_s"] == 808.0
    assert result["p50_ms"] == pytest.approx(50.5) and result["p99_ms"] == pytest.approx(99.01)
    assert result["data_bytes_per_request"] == pytest.approx(289668 / 404)
    failed = H2LOAD_SUMMARY.replace("404 succeeded, 0 failed", "400 succeeded, 4 failed")
    with pytest.raises(RuntimeError, match="4 failed"):
        load.parse_h2load(failed, log, seconds=0.5)
    assert load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_h2load_drives_our_server_and_catches_grpc_errors():
    import shutil

    import grpc
    import numpy as np

    from benchmarks import load

    if shutil.which("h2load") is None:
        pytest.skip("h2load not installed (apt-get install nghttp2-client; `make test` installs it)")
    with serving.serve("encoder", serving.REPO / "models" / "fmnist-robust.onnx", ["--intra-op-threads", "1"]
                       ) as port:
        target = f"{serving.LOOPBACK}:{port}"
        image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        encode, _ = bench._requests(port, image)
        with grpc.insecure_channel(target) as channel:
            real = len(load.grpc_frame(channel.unary_unary(bench.ENCODE)(encode)))
        result = load.closed_loop_h2load(target, bench.ENCODE, encode, clients=2, seconds=0.3, threads=2,
                                         min_response_bytes=real)
        assert result["requests_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0
        assert result["processes"] == 2 and result["generator"] == "h2load"
        # a malformed request is answered with HTTP 200 and a gRPC error trailer: caught by the size check
        with pytest.raises(RuntimeError, match="answered with errors"):
            load.closed_loop_h2load(target, bench.ENCODE, b"\xff\xff", clients=1, seconds=0.2,
                                    min_response_bytes=real)


def _triton_pids() -> set[int]:
    from pathlib import Path

    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"tritonserver" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def test_triton_peer_leaves_no_server_behind():
    import time

    try:
        serving.check_peer_python(serving.TRITON_VENV_PYTHON)
    except serving.PeerUnavailable as exc:
        pytest.skip(f"no PyTriton interpreter: {exc}")
    before = _triton_pids()
    model = serving.REPO / "models" / "fmnist-robust.onnx"
    with serving.serve_triton_peer(model, serving.TRITON_VENV_PYTHON, ["--intra-op-threads", "1"]) as port:
        assert port > 0
        started = _triton_pids() - before
        assert started, "PyTriton started no tritonserver"
    def running(pid: int) -> bool:  # a zombie (state Z) has exited, only its exit status is left
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10  # SIGKILL is asynchronous
    while (alive := [pid for pid in started if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"tritonserver processes outlived the peer: {alive}"


@pytest.mark.parametrize(("script", "message"), [
    ("sleep 30", "did not report its port within 1 s"),
    ("echo starting; exit 3", "exited without serving \\(status 3\\)")])
def test_a_triton_peer_that_never_serves_is_refused_in_time(tmp_path, monkeypatch, script, message):
    """The peer's start is bounded: a peer that hangs (or exits) before printing its port raises
    PeerUnavailable instead of blocking the bench (a real Triton start once hung a test run until its
    timeout)."""
    import time

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(serving, "check_peer_python", lambda python: dict(os.environ))
    started = time.monotonic()
    with pytest.raises(serving.PeerUnavailable, match=message):
        with serving.serve_triton_peer(tmp_path / "model.onnx", fake, timeout_s=1.0):
            pass
    assert time.monotonic() - started < 25  # the hung peer was stopped, not waited for
