"""Deadlines and the result cache tell the truth (issue 15 item 5, issue 16).

* F2ISemantic past its deadline is DEADLINE_EXCEEDED, never the l2 floor passed off as an answer.
* AUTO and the curve say whether their search completed (``completed`` / ``search_completed``).
* A truncated result is never cached: a later caller with time to spare gets a completed one.
* F2ISemantic runs through the same result cache and concurrent-bounds limit as the other RPCs.

Slow bounds are simulated by sleeping past the deadline, so nothing here asserts timings beyond the deadline.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from service_helpers import EngineFacts, auth, images, replace

from reaas.tensors import to_proto
from reaas.v1 import common_pb2, perturb_pb2, perturb_pb2_grpc
from services.perturb.engine import BoundEngine, CurveResult, DeadlineExceeded, RadiusResult
from services.perturb.semantic import SemanticCertifier, SemanticResult
from services.perturb.semantic import certify as certify_mod
from services.perturb.server import create_server

LONG_S = 5.0  # the scripted engines complete only with more than this many seconds left


def _stub(channel) -> perturb_pb2_grpc.PerturbStub:
    return perturb_pb2_grpc.PerturbStub(channel)


def _radius(channel, x, feature_radius, timeout=30.0, **fields) -> perturb_pb2.F2IPerturbResponse:
    request = perturb_pb2.F2IPerturbRequest(images=to_proto(x), feature_radius=feature_radius, **fields)
    return _stub(channel).F2IPerturb(request, metadata=auth(), timeout=timeout)


def _curve(channel, x, timeout=30.0, **fields) -> perturb_pb2.F2IPerturbCurveResponse:
    request = perturb_pb2.F2IPerturbCurveRequest(images=to_proto(x), **fields)
    return _stub(channel).F2IPerturbCurve(request, metadata=auth(), timeout=timeout)


def _semantic(channel, x, feature_radius, timeout=30.0, **fields) -> perturb_pb2.F2ISemanticResponse:
    request = perturb_pb2.F2ISemanticRequest(images=to_proto(x), feature_radius=feature_radius, **fields)
    return _stub(channel).F2ISemantic(request, metadata=auth(), timeout=timeout)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _has_time(deadline: float | None) -> bool:
    return deadline is None or deadline - time.monotonic() > LONG_S


class ScriptedEngine(EngineFacts):
    """The bound engine's API; AUTO-like: its search completes only with more than LONG_S seconds left."""

    def __init__(self, hold: bool = False):
        self.calls: list[tuple[str, int]] = []
        # with hold=True, image_radius signals ``entered`` and keeps its engine slot until ``release`` is set
        self.hold, self.entered, self.release = hold, threading.Event(), threading.Event()

    def image_radius(
        self, x, feature_radius, *, norm, method, relative_tolerance, clip_to_pixel_box, deadline
    ):
        self.calls.append(("radius", len(x)))
        if self.hold:
            self.entered.set()
            self.release.wait(30)
        done = _has_time(deadline)
        scale = 0.5 if done else 0.25  # a truncated search returns a smaller (still sound) radius
        return RadiusResult(np.asarray(feature_radius) * scale, ["crown_ibp"] * len(x), 1, completed=done)

    def curve(self, x, image_radii, *, norm, method, clip_to_pixel_box, deadline):
        self.calls.append(("curve", len(x)))
        done = _has_time(deadline)
        slope = 2.0 if done else 3.0  # a truncated curve is looser
        return CurveResult(np.tile(slope * np.asarray(image_radii), (len(x), 1)), completed=done)


@pytest.fixture
def scripted_semantic(monkeypatch) -> list[int]:
    """Replace the semantic certifier's search by a scripted one; returns the batch size of every call."""
    calls: list[int] = []

    def certify(self, x, feature_radius, kind, *, method="auto", relative_tolerance=1e-3,
                contrast_per_brightness=1.0, deadline=None) -> SemanticResult:
        calls.append(len(x))
        done = _has_time(deadline)
        t = np.asarray(feature_radius, dtype=np.float64) * (0.1 if done else 0.05)
        zero = np.zeros_like(t)
        return SemanticResult(t, t.copy(), zero, t / 2, ["crown"] * len(x), 1, completed=done)

    monkeypatch.setattr(SemanticCertifier, "certify", certify)
    return calls


# ---- F2ISemantic past its deadline -------------------------------------------------------------------------


def _slow_theta_bounds(monkeypatch, sleep_s: float) -> None:
    """Every bound evaluation of the semantic θ-search sleeps ``sleep_s`` first."""
    original = certify_mod.ComposedBounds.shift_bound

    def slow(self, *args, **kwargs):
        time.sleep(sleep_s)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(certify_mod.ComposedBounds, "shift_bound", slow)


def test_semantic_certifier_raises_when_the_search_overruns(monkeypatch, linear_onnx):
    engine = BoundEngine.from_onnx(linear_onnx)
    x, rf = images(1, seed=3), np.array([0.5])
    done = SemanticCertifier(engine).certify(x, rf, "brightness")
    assert done.completed and done.method_used == ["crown"]
    _slow_theta_bounds(monkeypatch, 0.3)
    with pytest.raises(DeadlineExceeded, match="semantic"):  # not the l2 floor passed off as the answer
        SemanticCertifier(engine).certify(x, rf, "brightness", deadline=time.monotonic() + 0.2)


def test_semantic_past_its_deadline_is_deadline_exceeded(start_server, perturb_config, monkeypatch):
    # the server keeps 8.5 s of the caller's 10 s back: its deadline passes 1.5 s in, long before the client's
    _, channel = start_server(create_server, replace(perturb_config, deadline_margin_ms=8500))
    _slow_theta_bounds(monkeypatch, 2.0)
    error = _error(lambda: _semantic(channel, images(1, seed=3), [0.5], timeout=10.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "semantic" in error.details()  # the server's answer, not the client's own timeout


def test_semantic_with_time_to_spare_completes(start_server, perturb_config):
    _, channel = start_server(create_server, perturb_config)
    reply = _semantic(channel, images(1, seed=3), [0.5])
    assert reply.search_completed and list(reply.method_used) == [common_pb2.CROWN]
    assert reply.brightness[0] >= reply.l2_equivalent[0] > 0


# ---- AUTO and the curve say whether they completed ---------------------------------------------------------


def _slow_after_lipschitz(engine: BoundEngine) -> None:
    """Every evaluator but the Lipschitz one sleeps until just past its deadline before bounding."""
    original = engine._evaluator

    def evaluator(prep, method, norm, clip, deadline):
        inner = original(prep, method, norm, clip, deadline)
        if method == "lipschitz" or deadline is None:
            return inner

        def evaluate(rows, radii):
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
            return inner(rows, radii)

        return evaluate

    engine._evaluator = evaluator


def test_auto_and_curve_report_whether_they_completed(linear_onnx):
    engine = BoundEngine.from_onnx(linear_onnx)
    x, rf = images(2, seed=1), np.array([0.3, 0.6])
    lip = engine.image_radius(x, rf, method="lipschitz")
    full = engine.image_radius(x, rf)
    assert lip.completed and full.completed
    assert engine.image_radius(x, rf, method="crown_ibp", deadline=time.monotonic() + 60).completed
    ladder = np.array([0.01, 0.1, 1.0])
    curve = engine.curve(x, ladder)
    assert curve.completed and curve.bounds.shape == (2, 3)

    _slow_after_lipschitz(engine)
    cut = engine.image_radius(x, rf, deadline=time.monotonic() + 0.5)
    assert not cut.completed
    assert np.all(cut.image_radius >= lip.image_radius) and np.all(cut.image_radius <= full.image_radius)
    cut_curve = engine.curve(x, ladder, deadline=time.monotonic() + 0.5)
    assert not cut_curve.completed
    assert np.all(cut_curve.bounds >= curve.bounds)  # Lipschitz only: sound, looser


def test_responses_carry_search_completed(start_server, perturb_config):
    engine = ScriptedEngine()
    _, channel = start_server(create_server, perturb_config, engine=engine)
    x = images(2, seed=2)
    assert not _radius(channel, x, [0.2, 0.4], timeout=2.0).search_completed
    assert _radius(channel, x, [0.2, 0.4]).search_completed
    assert not _curve(channel, x, timeout=2.0, num_radii=4).search_completed
    assert _curve(channel, x, num_radii=4).search_completed


def test_real_engine_reports_completed_searches(start_server, perturb_config):
    _, channel = start_server(create_server, perturb_config)
    x = images(2, seed=6)
    assert _radius(channel, x, [0.1, 0.3]).search_completed
    assert _radius(channel, x, [0.1, 0.3], method=common_pb2.LIPSCHITZ).search_completed
    assert _curve(channel, x, num_radii=4).search_completed


# ---- the cache never serves a truncated result -------------------------------------------------------------


def test_truncated_results_are_not_cached(start_server, perturb_config, scripted_semantic):
    engine = ScriptedEngine()
    _, channel = start_server(create_server, perturb_config, engine=engine)
    x, rf = images(2, seed=7), [0.2, 0.4]

    short = _radius(channel, x, rf, timeout=2.0)  # a short deadline: the search is cut short
    assert not short.search_completed and list(short.image_radius) == [0.05, 0.1]
    long = _radius(channel, x, rf)  # plenty of time: recomputed, not the truncated answer
    assert long.search_completed and list(long.image_radius) == [0.1, 0.2]
    again = _radius(channel, x, rf, timeout=2.0)  # the completed answer is cached and served
    assert again.search_completed and again.image_radius == long.image_radius
    assert engine.calls == [("radius", 2), ("radius", 2)]

    short_curve = _curve(channel, x, timeout=2.0, num_radii=4)
    long_curve = _curve(channel, x, num_radii=4)
    assert not short_curve.search_completed and long_curve.search_completed
    assert long_curve.curves[0].feature_shift_bound[0] == pytest.approx(2.0 * 1e-3)
    again_curve = _curve(channel, x, timeout=2.0, num_radii=4)
    assert again_curve.search_completed and again_curve.curves == long_curve.curves
    assert [c for c in engine.calls if c[0] == "curve"] == [("curve", 2), ("curve", 2)]

    short_semantic = _semantic(channel, x, rf, timeout=2.0)
    long_semantic = _semantic(channel, x, rf)
    assert not short_semantic.search_completed and long_semantic.search_completed
    assert list(long_semantic.brightness) == pytest.approx([0.02, 0.04])
    again_semantic = _semantic(channel, x, rf, timeout=2.0)
    assert again_semantic.search_completed and again_semantic.brightness == long_semantic.brightness
    assert scripted_semantic == [2, 2]


# ---- F2ISemantic goes through the cache and the concurrency limit ------------------------------------------


def test_semantic_is_cached(start_server, perturb_config, scripted_semantic):
    server, channel = start_server(create_server, perturb_config, engine=ScriptedEngine())
    x = images(2, seed=8)
    first = _semantic(channel, x, [0.2, 0.4])
    second = _semantic(channel, x, [0.2, 0.4])
    assert second.brightness == first.brightness and second.l2_equivalent == first.l2_equivalent
    assert scripted_semantic == [2]  # the second call was served from the cache
    _semantic(channel, x, [0.2, 0.8])  # a new R_F for image 1 only
    _semantic(channel, x, [0.2, 0.4], perturbation=perturb_pb2.CONTRAST)  # another perturbation: both miss
    _semantic(channel, x, [0.2, 0.4], perturbation=perturb_pb2.BRIGHTNESS_CONTRAST, contrast_per_brightness=2)
    assert scripted_semantic == [2, 1, 2, 2]
    assert server.metrics.value("reaas_cache_lookups_total", outcome="hit") == 2 + 1


def test_semantic_waits_for_a_free_engine_slot(start_server, perturb_config, scripted_semantic):
    engine = ScriptedEngine(hold=True)
    _, channel = start_server(create_server, replace(perturb_config, deadline_margin_ms=10), engine=engine)
    busy = _stub(channel).F2IPerturb.future(
        perturb_pb2.F2IPerturbRequest(images=to_proto(images(1)), feature_radius=[0.1]),
        metadata=auth(),
        timeout=30,
    )
    assert engine.entered.wait(10)  # the F2IPerturb call holds the only engine slot (concurrent_bounds = 1)
    try:
        error = _error(lambda: _semantic(channel, images(1, seed=1), [0.1], timeout=0.5))
    finally:
        engine.release.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scripted_semantic == []  # it never ran beside the busy call
    assert busy.result().search_completed and engine.calls == [("radius", 1)]
    assert _semantic(channel, images(1, seed=1), [0.1]).search_completed  # the slot is free again
    assert scripted_semantic == [1]


def test_call_deadline_keeps_back_the_reply_margin_and_a_reserve():
    """The perturb servicer answers by the client's deadline less 50 ms and 10% of the rest: a search
    round that overruns its own deadline still replies in time (make run once stopped on that)."""
    import time as _time
    from types import SimpleNamespace

    from services.common.rpc import Call
    from services.perturb.server import SEARCH_ROUND_RESERVE

    call = Call.__new__(Call)
    call.context = SimpleNamespace(time_remaining=lambda: 20.0)
    before = _time.monotonic()
    deadline = call.deadline(0.05, SEARCH_ROUND_RESERVE)
    assert before + (20.0 - 0.05) * 0.9 <= deadline <= _time.monotonic() + (20.0 - 0.05) * 0.9
    assert call.deadline(0.05) > deadline  # without the reserve: later
    call.context = SimpleNamespace(time_remaining=lambda: None)
    assert call.deadline(0.05, SEARCH_ROUND_RESERVE) is None
