"""Security checks: keys on every RPC, quota retry hint, TLS with a generated certificate, oversize."""

from __future__ import annotations

from reliability.security import OPEN_WITHOUT_KEY, run, service_methods


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
    assert oversize["huge_length_prefix"]["code"] in ("RESOURCE_EXHAUSTED", "skipped")
    assert report["ok"]


def test_only_probes_are_open():
    from reaas.v1 import encoder_pb2, perturb_pb2

    guarded = service_methods(encoder_pb2.DESCRIPTOR, "Encoder") + service_methods(
        perturb_pb2.DESCRIPTOR, "Perturb"
    )
    assert not set(guarded) & set(OPEN_WITHOUT_KEY)
    assert all("Health" in m or "Server" in m for m in OPEN_WITHOUT_KEY)
