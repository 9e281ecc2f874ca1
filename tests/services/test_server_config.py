"""Config (flags > env > defaults, all in --help), key files, quotas, CPU quota, CLI, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from service_helpers import auth, images

from reaas.tensors import to_proto
from reaas.v1 import encoder_pb2, encoder_pb2_grpc
from services.common.auth import load_api_keys
from services.common.config import EncoderConfig, PerturbConfig, build_parser, parse_config
from services.common.quota import QuotaExceeded, QuotaLimiter
from services.common.resources import available_cpus

REPO = Path(__file__).resolve().parents[2]


def test_flags_override_env_which_overrides_defaults(tmp_path):
    env = {
        "REAAS_MODEL": "/m.onnx",
        "REAAS_PORT": "6000",
        "REAAS_INSECURE_NO_AUTH": "true",
        "REAAS_MAX_QUEUE_DELAY_MS": "7.5",
        "REAAS_DYNAMIC_BATCHING": "0",
    }
    config = parse_config(EncoderConfig, [], environ=env)
    assert config.model_path == Path("/m.onnx") and config.port == 6000 and config.insecure_no_auth
    assert config.max_queue_delay_ms == 7.5 and config.dynamic_batching is False
    config = parse_config(EncoderConfig, ["--port", "7000", "--dynamic-batching"], environ=env)
    assert config.port == 7000 and config.dynamic_batching is True
    assert parse_config(PerturbConfig, ["--model", "m.onnx", "--insecure-no-auth"], environ={}).port == 50052


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--model is required"),
        (["--model", "m.onnx"], "refusing to start without API keys"),
        (["--model", "m.onnx", "--insecure-no-auth", "--tls-cert", "c.pem"], "go together"),
    ],
)
def test_invalid_configs_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(EncoderConfig, argv, environ={})
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_bad_env_value_is_reported(capsys):
    with pytest.raises(SystemExit):
        parse_config(EncoderConfig, ["--model", "m", "--insecure-no-auth"], environ={"REAAS_PORT": "eighty"})
    assert "REAAS_PORT" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_env_var_and_default():
    text = " ".join(build_parser(EncoderConfig, "").format_help().split())
    for flag, env in [
        ("--port", "REAAS_PORT"),
        ("--bind-address", "REAAS_BIND_ADDRESS"),
        ("--model", "REAAS_MODEL"),
        ("--api-key-file", "REAAS_API_KEY_FILE"),
        ("--quota-images-per-minute", ""),
        ("--tls-cert", "REAAS_TLS_CERT"),
        ("--tls-key", ""),
        ("--max-message-mb", ""),
        ("--worker-threads", ""),
        ("--otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("--max-queue-delay-ms", ""),
        ("--max-batch-size", ""),
        ("--intra-op-threads", ""),
    ]:
        assert flag in text and env in text
    assert "(default: 50051)" in text


def test_key_file_parsing(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nalice k1\n\nbob k2 30  # trailing comment\n")
    keys = load_api_keys(path)
    assert keys["k1"].name == "alice" and keys["k1"].images_per_minute == 0
    assert keys["k2"].images_per_minute == 30
    path.write_text("alice k1 3 extra\n")
    with pytest.raises(ValueError, match="expected"):
        load_api_keys(path)


def test_token_bucket_refills_continuously():
    now = [0.0]
    limiter = QuotaLimiter(clock=lambda: now[0])
    limiter.acquire("k", 60, 60)
    with pytest.raises(QuotaExceeded) as info:
        limiter.acquire("k", 30, 60)
    assert info.value.retry_after_s == pytest.approx(30.0)
    now[0] = 30.0
    limiter.acquire("k", 30, 60)
    limiter.acquire("other", 60, 60)  # buckets are per key
    limiter.acquire("k", 10**6, 0)  # 0 = unlimited


def test_cpu_quota_from_cgroup(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def _start_cli(args: list[str]) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.encoder", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "listening on" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained
            return process, int(line.rsplit(":", 1)[1])
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("server did not start")


def test_cli_sigterm_drains_in_flight_calls(cnn_onnx, api_key_file):
    process, port = _start_cli(
        [
            "--model",
            str(cnn_onnx),
            "--port",
            "0",
            "--bind-address",
            "127.0.0.1",
            "--api-key-file",
            str(api_key_file),
            "--intra-op-threads",
            "1",
            "--max-queue-delay-ms",
            "1500",
            "--grace-s",
            "10",
        ]
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            # This call waits 1.5 s in the batching queue: SIGTERM arrives while it is in flight.
            future = stub.Encode.future(
                encoder_pb2.EncodeRequest(images=to_proto(images(1))), metadata=auth(), timeout=20
            )
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert future.result().usage.queries == 1
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_refuses_to_start_without_keys(cnn_onnx):
    done = subprocess.run(
        [sys.executable, "-m", "services.encoder", "--model", str(cnn_onnx)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REAAS_API_KEY_FILE": ""},
    )
    assert done.returncode == 2 and "refusing to start without API keys" in done.stderr


def test_max_connection_age_becomes_grpc_channel_args():
    from services.common.server import _connection_age_options

    config = parse_config(EncoderConfig, ["--model", "m.onnx", "--insecure-no-auth",
                                          "--max-connection-age-s", "300", "--grace-s", "20"])
    assert _connection_age_options(config) == [("grpc.max_connection_age_ms", 300_000),
                                                ("grpc.max_connection_age_grace_ms", 20_000)]
    assert _connection_age_options(parse_config(EncoderConfig, ["--model", "m", "--insecure-no-auth"])) == []
