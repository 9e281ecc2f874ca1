"""``python -m services.encoder --workers N``: N processes on one port, each a full server; SIGTERM drains."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_helpers import auth, images

from reaas.tensors import from_proto, to_proto
from reaas.v1 import encoder_pb2, encoder_pb2_grpc
from services.common.config import EncoderConfig, parse_config, to_argv
from services.common.quota import QuotaExceeded, QuotaLimiter
from services.encoder.workers import worker_configs

REPO = Path(__file__).resolve().parents[2]


def test_worker_configs_split_threads_quota_and_metrics_ports(tmp_path, monkeypatch):
    monkeypatch.setattr("services.encoder.workers.available_cpus", lambda: 4)
    config = parse_config(EncoderConfig, ["--model", "m.onnx", "--insecure-no-auth", "--workers", "0",
                                          "--metrics-port", "9090"])
    workers = worker_configs(config, 50051)
    assert len(workers) == 4
    assert [w.metrics_port for w in workers] == [9090, 9091, 9092, 9093]
    assert all(w.intra_op_threads == 1 and w.quota_split == 4 and w.reuse_port and w.workers == 1
               and w.port == 50051 for w in workers)
    # each worker's flags parse back into exactly its configuration
    assert parse_config(EncoderConfig, to_argv(workers[1]), environ={}) == workers[1]


def test_a_split_quota_grants_each_worker_its_share():
    limiter = QuotaLimiter(clock=lambda: 0.0, split=4)
    limiter.acquire("k", 25, 100)  # ceil(100 / 4) = 25 per worker
    with pytest.raises(QuotaExceeded):
        limiter.acquire("k", 1, 100)


def test_two_workers_share_one_port_and_drain_on_sigterm(cnn_onnx, api_key_file):
    command = [sys.executable, "-m", "benchmarks.serving", "encoder", "--model", str(cnn_onnx), "--port", "0",
               "--bind-address", "127.0.0.1", "--api-key-file", str(api_key_file), "--workers", "2",
               "--intra-op-threads", "1", "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        port = int(process.stdout.readline())  # printed once both workers serve
        x = images(2)
        replies = []
        for _ in range(6):  # a channel each: one connection each, spread over the workers by the kernel
            own_connection = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=own_connection) as ch:
                reply = encoder_pb2_grpc.EncoderStub(ch).Encode(encoder_pb2.EncodeRequest(images=to_proto(x)),
                                                                metadata=auth(), timeout=10)
                replies.append(from_proto(reply.features, field="f"))
                with pytest.raises(grpc.RpcError) as denied:
                    encoder_pb2_grpc.EncoderStub(ch).Encode(encoder_pb2.EncodeRequest(images=to_proto(x)),
                                                            timeout=10)
                assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert all(np.array_equal(r, replies[0]) for r in replies)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
