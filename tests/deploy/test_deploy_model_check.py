"""deploy.model_check: a model starts only when it hashes to its card's model_sha256 (and the deployment's
pin), the shipped placeholder API key is refused, and on success the server command is exec'd."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.model_check import ModelCheckError, check_api_keys, check_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(tmp_path) -> Path:
    """A fake model file with a correct card beside it."""
    path = tmp_path / "enc.onnx"
    path.write_bytes(b"not really onnx, but bytes to hash")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"model_sha256": digest}))
    return path


def test_matching_card_and_pin_pass(model):
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert check_model(model) == digest
    assert check_model(model, digest.upper()) == digest


@pytest.mark.parametrize("case, message", [
    ("tampered", "hashes to"), ("no_card", "not found"), ("no_sha", "no model_sha256"), ("pin", "pins"),
    ("no_model", "not found"), ("bad_json", "not a JSON object"),
])
def test_mismatches_refuse_to_start(model, case, message):
    card = model.with_suffix(".json")
    pin = ""
    if case == "tampered":
        model.write_bytes(model.read_bytes() + b"!")
    elif case == "no_card":
        card.unlink()
    elif case == "no_sha":
        card.write_text(json.dumps({"model_name": "enc"}))
    elif case == "pin":
        pin = "0" * 64
    elif case == "no_model":
        model.unlink()
    else:
        card.write_text("[1, 2")
    with pytest.raises(ModelCheckError, match=message):
        check_model(model, pin)


def test_the_shipped_placeholder_secret_is_refused(tmp_path):
    secret = yaml.safe_load((ROOT / "deploy/k8s/base/secret.yaml").read_text())
    keys = tmp_path / "api-keys.txt"
    keys.write_text(secret["stringData"]["api-keys.txt"])
    with pytest.raises(ModelCheckError, match="placeholder"):
        check_api_keys(keys)
    keys.write_text("# name key\nalice 3f1c0e5d9b7a4e21 600\n")
    check_api_keys(keys)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REAAS_")}
    return subprocess.run([sys.executable, "-m", "deploy.model_check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, "PYTHONPATH": str(ROOT), **env})


def test_entrypoint_execs_the_server_only_after_the_check(model):
    command = ["--", sys.executable, "-c", "print('server started')"]
    ok = _run(command, REAAS_MODEL=str(model))
    assert ok.returncode == 0 and ok.stdout.strip() == "server started", ok.stderr
    model.write_bytes(b"swapped")
    bad = _run(command, REAAS_MODEL=str(model))
    assert bad.returncode == 1 and "server started" not in bad.stdout and "hashes to" in bad.stderr
