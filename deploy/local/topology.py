"""``up``/``down``/``restart`` of the local topology: N encoder replicas and one perturb on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.processes import RUN_DIR_ENV, is_ours, is_running, read_pid, spawn, stop
from services.common.model_file import sha256_of

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = Path("runs/local")
ENDPOINTS_FILE = "endpoints.json"
HEALTH_SERVICES = {"encoder": "reaas.v1.Encoder", "perturb": "reaas.v1.Perturb"}
LOOPBACK = "127.0.0.1"


class TopologyError(RuntimeError):
    """The topology could not be started, or is already running."""


@dataclass
class Replica:
    """One server process: its service, ports, pid, log and the exact command that started it."""

    name: str
    service: str
    port: int
    metrics_port: int
    argv: list[str]
    log: str
    pid: int = 0

    @property
    def address(self) -> str:
        """host:port to dial this replica alone."""
        return f"{LOOPBACK}:{self.port}"


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _free_ports(count: int, span: int = 1) -> list[int]:
    """``count`` distinct ports free on loopback right now, outside the kernel's ephemeral range; with
    ``span`` > 1, each port p comes with p + 1 ... p + span - 1 free too (an encoder's workers' /metrics).

    A replica restarts on its old port (what the fault tests rely on); a port from the ephemeral range
    could meanwhile be taken as the local end of any outgoing connection, and the restart would fail.
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(10_000, 65_536 - span, span) if not (low <= p + span - 1 and p <= high)]
    random.SystemRandom().shuffle(candidates)
    found: list[int] = []
    with contextlib.ExitStack() as stack:
        for port in candidates:
            try:
                for offset in range(span):
                    stack.enter_context(socket.socket()).bind((LOOPBACK, port + offset))
            except OSError:
                continue
            found.append(port)
            if len(found) == count:
                return found
    raise TopologyError(f"no {count} free loopback ports outside {low}-{high}")


def _child_env(run_dir: Path) -> dict[str, str]:
    """The caller's environment without REAAS_* settings (flags decide), plus our run-dir marker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REAAS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    env[RUN_DIR_ENV] = str(run_dir)
    return env


def _pid_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def _running(run_dir: Path) -> dict[str, int]:
    """{replica name: pid} for each pid file in ``run_dir`` whose process is ours and alive."""
    alive = {}
    for pid_path in sorted(run_dir.glob("*.pid")):
        name = pid_path.stem
        pid = read_pid(pid_path)
        module = f"services.{name.rsplit('-', 1)[0]}"
        if pid is not None and is_running(pid) and is_ours(pid, run_dir, module):
            alive[name] = pid
    return alive


def check_health(address: str, services: list[str], timeout_s: float = 1.0) -> bool:
    """True when every name in ``services`` reports SERVING on ``address``."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            return all(stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=timeout_s).status
                       == health_pb2.HealthCheckResponse.SERVING for s in services)
        except grpc.RpcError:
            return False


def _wait_serving(replicas: list[Replica], timeout_s: float) -> None:
    """Block until every replica is SERVING; raise TopologyError naming the first that died or timed out."""
    pending = list(replicas)
    deadline = time.monotonic() + timeout_s
    while pending:
        for replica in list(pending):
            if not is_running(replica.pid):
                raise TopologyError(f"{replica.name} exited during start-up; its log:\n{_tail(replica.log)}")
            if check_health(replica.address, ["", HEALTH_SERVICES[replica.service]]):
                pending.remove(replica)
        if pending and time.monotonic() > deadline:
            names = ", ".join(r.name for r in pending)
            raise TopologyError(f"not SERVING after {timeout_s:.0f} s: {names}; log of {pending[0].name}:\n"
                                f"{_tail(pending[0].log)}")
        if pending:
            time.sleep(0.2)


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _plan(run_dir: Path, model: Path, auth_args: list[str], encoder_replicas: int, base_port: int,
          intra_op_threads: int, grace_s: float, encoder_workers: int = 2) -> list[Replica]:
    """The replicas to start, with their ports and full command lines."""
    names = [(f"encoder-{i}", "encoder") for i in range(encoder_replicas)] + [("perturb-0", "perturb")]
    span = max(1, encoder_workers)  # each encoder's workers serve /metrics on metrics_port + 0 ... span - 1
    if base_port:
        ports = [base_port + i for i in range(len(names))]
        metrics = [base_port + 100 + span * i for i in range(len(names))]
    else:
        ports, metrics = _free_ports(len(names)), _free_ports(len(names), span)
    replicas = []
    for (name, service), port, metrics_port in zip(names, ports, metrics, strict=True):
        argv = [sys.executable, "-m", f"services.{service}", "--model", str(model), "--port", str(port),
                "--bind-address", LOOPBACK, *auth_args, "--intra-op-threads", str(intra_op_threads),
                "--worker-threads", "8", "--metrics-port", str(metrics_port), "--grace-s", str(grace_s),
                "--drain-delay-s", "0"]
        if service == "encoder":  # worker i of a replica serves /metrics on metrics_port + i
            argv += ["--workers", str(encoder_workers)]
        replicas.append(Replica(name, service, port, metrics_port, argv, str(run_dir / f"{name}.log")))
    return replicas


def _endpoints(run_dir: Path, model: Path, key_file: Path | None, api_key: str | None,
               replicas: list[Replica]) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for service in HEALTH_SERVICES:
        members = [r for r in replicas if r.service == service]
        services[service] = {
            "target": "ipv4:" + ",".join(r.address for r in members),
            "lb_policy": "round_robin",
            "health_service": HEALTH_SERVICES[service],
            "replicas": [{**asdict(r), "address": r.address} for r in members],
        }
    return {"run_dir": str(run_dir), "model": str(model), "model_sha256": sha256_of(model),
            "api_key_file": str(key_file) if key_file else None, "api_key": api_key, "services": services}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def up(run_dir: Path = DEFAULT_RUN_DIR, model: Path = Path("models/fmnist-robust.onnx"), *,
       api_key_file: Path | None = None, insecure_no_auth: bool = False, encoder_replicas: int = 2,
       base_port: int = 0, intra_op_threads: int = 1, grace_s: float = 5.0, timeout_s: float = 120.0,
       encoder_workers: int = 2) -> dict[str, Any]:
    """Start the topology, wait until every replica is SERVING, write and return ``endpoints.json``."""
    run_dir, model = Path(run_dir).resolve(), Path(model).resolve()
    if not model.is_file():
        raise TopologyError(f"model {model} not found: train one (python -m services.trainer --export ...) "
                            "or pass --model")
    run_dir.mkdir(parents=True, exist_ok=True)
    alive = _running(run_dir)
    if alive:
        raise TopologyError(f"already running in {run_dir}: {sorted(alive)}; run `make down` first")
    for stale in [*run_dir.glob("*.pid"), run_dir / ENDPOINTS_FILE]:
        stale.unlink(missing_ok=True)
    api_key = None
    if insecure_no_auth:
        auth_args = ["--insecure-no-auth"]
    else:
        if api_key_file is None:
            api_key, api_key_file = secrets.token_hex(16), run_dir / "api-keys.txt"
            fd = os.open(api_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"# name key [images_per_minute]\nlocal {api_key}\n")
        api_key_file = Path(api_key_file).resolve()
        auth_args = ["--api-key-file", str(api_key_file)]
    replicas = _plan(run_dir, model, auth_args, encoder_replicas, base_port, intra_op_threads, grace_s,
                     encoder_workers)
    env = _child_env(run_dir)
    try:
        for replica in replicas:
            replica.pid = spawn(replica.argv, log_path=Path(replica.log),
                                pid_path=_pid_path(run_dir, replica.name), env=env, cwd=REPO_ROOT)
        _wait_serving(replicas, timeout_s)
    except BaseException:
        stop([r.pid for r in replicas if r.pid], grace_s=2.0)
        for replica in replicas:
            _pid_path(run_dir, replica.name).unlink(missing_ok=True)
        raise
    endpoints = _endpoints(run_dir, model, api_key_file, api_key, replicas)
    _write_json(run_dir / ENDPOINTS_FILE, endpoints)
    return endpoints


def down(run_dir: Path = DEFAULT_RUN_DIR, grace_s: float = 10.0) -> list[str]:
    """Stop every process of the topology (SIGTERM, SIGKILL after ``grace_s``); the names that ran."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        return []
    alive = _running(run_dir)
    stop(alive.values(), grace_s)
    for pid_path in run_dir.glob("*.pid"):
        pid_path.unlink(missing_ok=True)
    (run_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
    return sorted(alive)


def load_endpoints(run_dir: Path = DEFAULT_RUN_DIR) -> dict[str, Any]:
    """The ``endpoints.json`` that ``up`` wrote."""
    return json.loads((Path(run_dir) / ENDPOINTS_FILE).read_text())


def restart(run_dir: Path, name: str, grace_s: float = 10.0, timeout_s: float = 120.0) -> dict[str, Any]:
    """Stop replica ``name`` if it runs, start it again on the same ports, wait for SERVING; new endpoints."""
    run_dir = Path(run_dir).resolve()
    endpoints = load_endpoints(run_dir)
    entries = [e for s in endpoints["services"].values() for e in s["replicas"] if e["name"] == name]
    if not entries:
        raise TopologyError(f"no replica named {name!r} in {run_dir / ENDPOINTS_FILE}")
    entry = entries[0]
    fields = ("name", "service", "port", "metrics_port", "argv", "log", "pid")
    replica = Replica(**{k: entry[k] for k in fields})
    if is_running(replica.pid) and is_ours(replica.pid, run_dir, f"services.{replica.service}"):
        stop([replica.pid], grace_s)
    replica.pid = spawn(replica.argv, log_path=Path(replica.log), pid_path=_pid_path(run_dir, name),
                        env=_child_env(run_dir), cwd=REPO_ROOT)
    _wait_serving([replica], timeout_s)
    entry["pid"] = replica.pid
    _write_json(run_dir / ENDPOINTS_FILE, endpoints)
    return endpoints
