"""Security checks: keys on every RPC, quota retry hint, TLS with a generated certificate, oversize."""

from __future__ import annotations

import sys

from reliability.__main__ import goal_line, goals, goals_met
from reliability.security import OPEN_WITHOUT_KEY, check_oversize, outcome, run, service_methods

H2_MODULES = ("h2", "h2.config", "h2.connection", "h2.events")


def test_every_security_check_passes(stand_in_onnx, tmp_path):
    report = run(stand_in_onnx, tmp_path, log=lambda _: None)
    auth = report["auth"]
    assert auth["every_rpc_needs_a_key"], auth["failures"]
    assert auth["methods_checked"] >= 12 and auth["cases"] == 4 * auth["methods_checked"]
    assert "reaas.v1.Encoder" in auth["reflection_open_lists"]
    quota = report["quota"]
    assert quota["ok"], quota
    assert int(quota["encoder_over_quota"]["retry_after_ms"]) > 0
    assert quota["batch_over_quota"]["retry_after_ms"] is None  # no retry helps: split the batch
    assert report["tls"]["ok"], report["tls"]
    oversize = report["oversize"]
    assert oversize["code"] == "RESOURCE_EXHAUSTED" and oversize["served_after"]
    assert oversize["huge_length_prefix"]["code"] == "RESOURCE_EXHAUSTED"  # h2 is a dev dependency
    assert oversize["status"] == "passed" and oversize["skipped"] == [] and oversize["ok"]
    assert report["ok"] and report["status"] == "passed" and report["skipped"] == []


def test_a_skipped_check_is_not_a_pass():
    assert outcome({"a": True, "b": True}) == {"ok": True, "status": "passed", "failed": [], "skipped": []}
    assert outcome({"a": True, "b": None}) == {
        "ok": False,
        "status": "skipped",
        "failed": [],
        "skipped": ["b"],
    }
    assert outcome({"a": False, "b": None})["status"] == "failed"


def test_a_skipped_length_prefix_probe_is_reported_as_skipped(stand_in_onnx, tmp_path, monkeypatch):
    """Without h2 the 1 GiB probe cannot run: it is "skipped", and neither the oversize check nor the
    security summary nor the goals count it as passed."""
    from reliability.common import write_keys

    for name in H2_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import h2 raises ImportError
    keys = write_keys(tmp_path / "keys", limited_images_per_minute=10)
    oversize = check_oversize(stand_in_onnx, keys)
    assert oversize["code"] == "RESOURCE_EXHAUSTED"  # the over-limit message itself was refused
    assert oversize["huge_length_prefix"]["code"] == "skipped"
    assert oversize["status"] == "skipped" and oversize["skipped"] == ["huge_length_prefix"]
    assert oversize["ok"] is False

    passed = {"every_rpc_needs_a_key": True}
    security = {"auth": passed, "quota": {"ok": True}, "tls": {"ok": True}, "oversize": oversize}
    checks = goals({"security": security}, quick=True)
    assert checks["oversize message rejected before allocation"] is None  # not measured, not met
    assert not goals_met(checks)
    assert "NOT MEASURED" in goal_line("oversize message rejected before allocation", None)


def test_only_probes_are_open():
    from reaas.v1 import encoder_pb2, perturb_pb2

    guarded = service_methods(encoder_pb2.DESCRIPTOR, "Encoder") + service_methods(
        perturb_pb2.DESCRIPTOR, "Perturb"
    )
    assert not set(guarded) & set(OPEN_WITHOUT_KEY)
    assert all("Health" in m or "Server" in m for m in OPEN_WITHOUT_KEY)
