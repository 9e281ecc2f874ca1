"""Fuzzing, reduced: 100 hypothesis cases per RPC family give no INTERNAL/UNKNOWN, servers stay healthy."""

from __future__ import annotations

import grpc
import pytest

from reliability import fuzz
from reliability.common import serving, write_keys
from reliability.fuzz import FuzzSettings, healthy_after, run_against


def test_fuzzing_every_rpc_finds_no_internal_error(stand_in_onnx, tmp_path):
    keys = write_keys(tmp_path)
    with (
        serving("encoder", stand_in_onnx, keys, model_name="model") as (_, enc),
        serving("perturb", stand_in_onnx, keys, model_name="model") as (_, per),
    ):
        report = run_against(
            enc, per, keys.metadata(), FuzzSettings(cases_per_family=100), log=lambda _: None
        )
        health = healthy_after(enc, per, keys.metadata(), stand_in_onnx)
    assert report["fuzz_internal_errors"] == 0, report["internal_examples"]
    assert report["fuzz_cases"] == 100 * fuzz.FAMILIES
    assert all(f["cases"] == 100 for f in report["families"].values())
    # the strategies reach past validation: some cases succeed, several specific codes occur
    assert report["codes"].get("OK", 0) > 0
    assert {"INVALID_ARGUMENT", "UNAUTHENTICATED", "FAILED_PRECONDITION"} <= set(report["codes"])
    assert all(health.values()), health


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab"])
def test_undecodable_request_bytes_get_invalid_argument(stand_in_onnx, tmp_path, payload):
    keys = write_keys(tmp_path)
    with serving("encoder", stand_in_onnx, keys) as (_, target), grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as error:
            channel.unary_unary("/reaas.v1.Encoder/Encode")(payload, metadata=keys.metadata(), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
