"""``make up`` / ``make down`` (deploy.local): two encoder replicas and one perturb on loopback start, report
SERVING, answer correctly through each replica behind client-side round_robin, survive a replica restart, and
leave no process behind. Runs ``make`` when the Makefile has the targets, else the module directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVERS = [ROOT / "services/encoder/__main__.py", ROOT / "services/perturb/__main__.py"]
pytestmark = pytest.mark.skipif(
    not all(path.is_file() for path in SERVERS),
    reason="services/encoder or services/perturb not there yet: nothing to start")


def linear_encoder(directory: Path) -> tuple[Path, np.ndarray]:
    """f(x) = W flatten(x) as ONNX (W [8, 784]) with its model card; its exact l2 radius is R_F / ||W||_2."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from services.common.model_file import sha256_of

    weight = np.random.default_rng(0).normal(size=(8, 784)).astype(np.float32) / 28.0
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W"], ["features"], transB=1)],
        "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, 28, 28])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 8])],
        [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "linear.onnx"
    onnx.save(model, str(path))
    path.with_suffix(".json").write_text(json.dumps({"model_sha256": sha256_of(path), "note": "test"}))
    return path, weight


def _make_has(target: str) -> bool:
    makefile = ROOT / "Makefile"
    return (shutil.which("make") is not None and makefile.is_file()
            and re.search(rf"^{target}:", makefile.read_text(), re.M) is not None)


def topology(action: str, run_dir: Path, *extra: str, model: Path | None = None
             ) -> subprocess.CompletedProcess:
    """``make up|down RUN_DIR=.. MODEL=..`` if the Makefile has it, else ``python -m deploy.local``."""
    if action in ("up", "down") and _make_has(action) and not extra:
        command = ["make", "-s", action, f"RUN_DIR={run_dir}"] + ([f"MODEL={model}"] if model else [])
    else:
        command = [sys.executable, "-m", "deploy.local", "--run-dir", str(run_dir), action, *extra]
        command += ["--model", str(model)] if model else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150, env=env)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def marked_processes(run_dir: Path) -> list[int]:
    """Live pids whose environment carries this run directory's marker (deploy.local sets it on children)."""
    marker = f"REAAS_LOCAL_RUN_DIR={run_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def encode_calls(metrics_port: int) -> float:
    """Finished OK Encode calls in one replica's Prometheus metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = r'^reaas_rpc_total\{code="OK",method="Encode",service="encoder"\} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def test_up_serves_through_every_replica_and_down_leaves_nothing(tmp_path):
    from reaas.tensors import from_proto, to_proto
    from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, perturb_pb2, perturb_pb2_grpc
    from services.common.model_file import sha256_of

    run_dir = (tmp_path / "run").resolve()
    missing = topology("up", run_dir, model=tmp_path / "absent.onnx")
    assert missing.returncode != 0 and "not found" in missing.stderr + missing.stdout
    assert not list(run_dir.glob("*.pid"))

    model, weight = linear_encoder(tmp_path)
    started = topology("up", run_dir, model=model)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        endpoints = json.loads((run_dir / "endpoints.json").read_text())
        assert endpoints["model_sha256"] == sha256_of(model)
        encoders = endpoints["services"]["encoder"]["replicas"]
        (perturb,) = endpoints["services"]["perturb"]["replicas"]
        assert len(encoders) == 2 and all(alive(r["pid"]) for r in [*encoders, perturb])
        target = endpoints["services"]["encoder"]["target"]
        assert target == "ipv4:" + ",".join(r["address"] for r in encoders)
        pid_files = sorted(p.name for p in run_dir.glob("*.pid"))
        assert pid_files == ["encoder-0.pid", "encoder-1.pid", "perturb-0.pid"]

        again = topology("up", run_dir, model=model)
        assert again.returncode != 0 and "already running" in again.stderr + again.stdout

        metadata = (("authorization", f"Bearer {endpoints['api_key']}"),)
        images = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
        expected = images.reshape(2, -1) @ weight.T
        with grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = encoder_pb2_grpc.EncoderStub(channel)
            for _ in range(6):
                reply = stub.Encode(encoder_pb2.EncodeRequest(images=to_proto(images)), metadata=metadata,
                                    timeout=10, wait_for_ready=True)
                np.testing.assert_allclose(from_proto(reply.features, field="features"), expected, atol=1e-5)
            with pytest.raises(grpc.RpcError) as denied:
                stub.Encode(encoder_pb2.EncodeRequest(images=to_proto(images)), timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        workers = int(encoders[0]["argv"][encoders[0]["argv"].index("--workers") + 1])  # /metrics on port + i
        per_replica = [sum(encode_calls(r["metrics_port"] + i) for i in range(workers)) for r in encoders]
        assert min(per_replica) >= 1 and sum(per_replica) == 6, per_replica  # round_robin reached both

        with grpc.insecure_channel(endpoints["services"]["perturb"]["target"]) as channel:
            reply = perturb_pb2_grpc.PerturbStub(channel).F2IPerturb(
                perturb_pb2.F2IPerturbRequest(images=to_proto(images[:1]), feature_radius=[1.0],
                                              method=common_pb2.LIPSCHITZ), metadata=metadata, timeout=30)
        exact = 1.0 / np.linalg.norm(weight.astype(np.float64), 2)  # the largest sound radius for f = W x
        assert 0.99 * exact <= reply.image_radius[0] <= exact

        os.kill(encoders[0]["pid"], signal.SIGKILL)  # what issue 9's fault tests do; restart brings it back
        restarted = topology("restart", run_dir, "encoder-0")
        assert restarted.returncode == 0, restarted.stderr
        new = json.loads((run_dir / "endpoints.json").read_text())["services"]["encoder"]["replicas"][0]
        assert new["port"] == encoders[0]["port"] and new["pid"] != encoders[0]["pid"] and alive(new["pid"])
        pids = [new["pid"], encoders[1]["pid"], perturb["pid"]]
    finally:
        stopped = topology("down", run_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in pids)
    assert marked_processes(run_dir) == []
    assert not list(run_dir.glob("*.pid")) and not (run_dir / "endpoints.json").exists()
    idle = topology("down", run_dir)
    assert idle.returncode == 0 and "nothing was running" in idle.stdout


def test_free_ports_avoid_the_ephemeral_range():
    """A replica restarts on its old port: one from the ephemeral range could meanwhile be the local end of
    any outgoing connection, and the restart would fail to bind."""
    from deploy.local.topology import _ephemeral_range, _free_ports

    low, high = _ephemeral_range()
    ports = _free_ports(6)
    assert len(set(ports)) == 6 and all(not low <= p <= high and p >= 10_000 for p in ports)
