"""grpcurl (a real binary) lists, describes and calls both services through server reflection alone."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_helpers import KEYS, images

from services.encoder.server import create_server as create_encoder
from services.perturb.server import create_server as create_perturb

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))
pytestmark = pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl binary not installed")


def _grpcurl(port: int, *args: str, data: dict | None = None, key: str | None = "alice") -> str:
    command = [GRPCURL, "-plaintext"]
    if key:
        command += ["-H", f"authorization: Bearer {KEYS[key]}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    done = subprocess.run([*command, f"127.0.0.1:{port}", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _images_json(x: np.ndarray) -> dict:
    return {
        "shape": list(x.shape),
        "dtype": "FLOAT32",
        "data": base64.b64encode(x.astype("<f4").tobytes()).decode(),
    }


def test_grpcurl_encoder(start_server, encoder_config):
    server, _ = start_server(create_encoder, encoder_config)
    listed = _grpcurl(server.port, "list", key=None).split()
    assert {"reaas.v1.Encoder", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(listed)
    assert "rpc Encode ( .reaas.v1.EncodeRequest )" in _grpcurl(server.port, "describe", "reaas.v1.Encoder")
    info = json.loads(_grpcurl(server.port, "reaas.v1.Encoder/GetModelInfo"))
    assert info["feature_dim"] == "8" and info["model_name"] == "tiny-cnn"
    reply = json.loads(
        _grpcurl(server.port, "reaas.v1.Encoder/Encode", data={"images": _images_json(images(2))})
    )
    assert reply["features"]["shape"] == ["2", "8"] and reply["usage"]["queries"] == "2"
    features = np.frombuffer(base64.b64decode(reply["features"]["data"]), dtype="<f4")
    assert features.shape == (16,) and np.all(np.isfinite(features))
    health = json.loads(
        _grpcurl(server.port, "grpc.health.v1.Health/Check", data={"service": "reaas.v1.Encoder"}, key=None)
    )
    assert health["status"] == "SERVING"


def test_grpcurl_perturb(start_server, perturb_config):
    server, _ = start_server(create_perturb, perturb_config)
    listed = _grpcurl(server.port, "list", key=None).split()
    assert {"reaas.v1.Perturb", "grpc.health.v1.Health"} <= set(listed)
    described = _grpcurl(server.port, "describe", "reaas.v1.Perturb")
    assert "rpc F2IPerturb" in described and "rpc F2IPerturbCurve" in described
    request = {"images": _images_json(images(1)), "feature_radius": [0.5], "method": "LIPSCHITZ"}
    reply = json.loads(_grpcurl(server.port, "reaas.v1.Perturb/F2IPerturb", data=request))
    assert reply["image_radius"][0] > 0 and reply["method_used"] == ["LIPSCHITZ"]
    curve = json.loads(
        _grpcurl(
            server.port,
            "reaas.v1.Perturb/F2IPerturbCurve",
            data={"images": _images_json(images(1)), "num_radii": 4},
        )
    )
    assert len(curve["curves"][0]["feature_shift_bound"]) == 4
