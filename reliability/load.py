"""Load: N concurrent clients for T seconds against each service of the ``make up`` topology on 127.0.0.1.

Bounded in time and in calls per client, it stops by itself. Each client is a thread with its own channel
sending one image per call (Encode through round_robin over the encoder replicas; F2IPerturb with the
Lipschitz method and a fresh random R_F per call, so the result cache does not answer for the engine).
Reported per service: errors by status code, latency p50/p99, throughput, and every replica's resident
memory at T/2 and at T (growth in between must stay ≤ 10%).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from reaas.tensors import to_proto
from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, perturb_pb2, perturb_pb2_grpc


@dataclass(frozen=True)
class LoadSettings:
    """Clients, seconds per service, the per-client call cap and the per-call deadline."""

    clients: int = 64
    seconds: float = 60.0
    max_calls_per_client: int = 100_000
    timeout_s: float = 30.0
    seed: int = 0


def percentile_ms(latencies_s: list[float], q: float) -> float:
    """The q-th percentile of latencies in milliseconds (0 when there are none)."""
    return float(np.percentile(np.asarray(latencies_s) * 1000, q)) if latencies_s else 0.0


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc; None when it cannot be read (process gone, no VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                value = int(line.split()[1]) * 1024
                return value if value > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_growth(at_half: dict[str, int | None], at_end: dict[str, int | None]) -> dict[str, float | None]:
    """Relative RSS growth per replica between the two samples; None (unmeasured) where either sample is
    missing, unreadable or 0: a replica whose memory could not be read has not passed the growth check."""
    growth: dict[str, float | None] = {}
    for name in at_half.keys() | at_end.keys():
        half, end = at_half.get(name), at_end.get(name)
        measured = half is not None and end is not None and half > 0 and end > 0
        growth[name] = (end - half) / half if measured else None
    return growth


def max_growth(growth: dict[str, float | None]) -> float | None:
    """The largest growth, or None (unmeasured) when there is none or any replica's is unmeasured."""
    if not growth or any(g is None for g in growth.values()):
        return None
    return max(growth.values())


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _loopback_only(target: str) -> None:
    hosts = [part.rsplit(":", 1)[0] for part in target.removeprefix("ipv4:").split(",")]
    if any(host != "127.0.0.1" for host in hosts):
        raise ValueError(f"load tests only target 127.0.0.1, got {target}")


def drive(
    target: str,
    make_call: Callable[[grpc.Channel, np.random.Generator], None],
    pids: dict[str, int],
    settings: LoadSettings,
) -> dict:
    """Run ``settings.clients`` client threads against ``target`` for ``settings.seconds``; the figures."""
    _loopback_only(target)
    options = [("grpc.lb_policy_name", "round_robin")]
    stop_at = time.monotonic() + settings.seconds
    lock = threading.Lock()
    latencies: list[float] = []
    codes: collections.Counter[str] = collections.Counter()

    def client(number: int) -> None:
        rng = np.random.default_rng([settings.seed, number])
        own, own_codes = [], collections.Counter()
        with grpc.insecure_channel(target, options=options) as channel:
            for _ in range(settings.max_calls_per_client):
                if time.monotonic() >= stop_at:
                    break
                started = time.perf_counter()
                try:
                    make_call(channel, rng)
                    own_codes["OK"] += 1
                    own.append(time.perf_counter() - started)
                except grpc.RpcError as error:
                    own_codes[error.code().name] += 1
        with lock:
            latencies.extend(own)
            codes.update(own_codes)

    memory: dict[str, dict[str, int]] = {}

    def sample_memory() -> None:
        begin = stop_at - settings.seconds
        for label, at in (("half", begin + settings.seconds / 2), ("end", stop_at - 0.5)):
            time.sleep(max(0.0, at - time.monotonic()))
            memory[label] = {name: rss_bytes(pid) for name, pid in pids.items()}

    memory["start"] = {name: rss_bytes(pid) for name, pid in pids.items()}
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(settings.clients)]
    threads.append(threading.Thread(target=sample_memory, daemon=True))
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(settings.seconds + settings.timeout_s + 30)
    wall = time.perf_counter() - wall
    ok = codes.get("OK", 0)
    growth = memory_growth(memory.get("half", dict.fromkeys(pids)), memory.get("end", dict.fromkeys(pids)))
    largest = max_growth(growth)
    return {
        "clients": settings.clients,
        "seconds": round(wall, 1),
        "calls": sum(codes.values()),
        "load_errors": sum(codes.values()) - ok,
        "codes": dict(codes),
        "p50_ms": round(percentile_ms(latencies, 50), 2),
        "p99_ms": round(percentile_ms(latencies, 99), 2),
        "calls_per_s": round(ok / max(wall, 1e-9), 1),
        "rss_mib": {k: {n: _mib(v) for n, v in m.items()} for k, m in memory.items()},
        "memory_growth_half_to_end": {
            n: None if g is None else round(g, 4) for n, g in sorted(growth.items())
        },
        "memory_unmeasured": sorted(n for n, g in growth.items() if g is None),
        "max_memory_growth": None if largest is None else round(largest, 4),  # None: not a pass
    }


def run(model: Path, work_dir: Path, settings: LoadSettings, log: Callable[[str], None] = print) -> dict:
    """Start the topology, load the encoder, then the perturb service; always stop the topology."""
    from deploy.local import down, up
    from reliability.common import evaluation_images

    run_dir = (work_dir / "load-topology").resolve()
    down(run_dir, grace_s=2.0)
    _, images, _ = evaluation_images(500)
    endpoints = up(run_dir, model, encoder_replicas=2, grace_s=2.0, timeout_s=180.0)
    metadata = (("authorization", f"Bearer {endpoints['api_key']}"),)
    encoded = [to_proto(images[i : i + 1]) for i in range(len(images))]
    report = {"settings": asdict(settings)}
    try:

        def encode(channel: grpc.Channel, rng: np.random.Generator) -> None:
            request = encoder_pb2.EncodeRequest(images=encoded[rng.integers(len(encoded))])
            encoder_pb2_grpc.EncoderStub(channel).Encode(
                request, metadata=metadata, timeout=settings.timeout_s
            )

        def f2i(channel: grpc.Channel, rng: np.random.Generator) -> None:
            request = perturb_pb2.F2IPerturbRequest(
                images=encoded[rng.integers(len(encoded))],
                feature_radius=[float(rng.uniform(0.01, 1.0))],
                method=common_pb2.LIPSCHITZ,
            )
            perturb_pb2_grpc.PerturbStub(channel).F2IPerturb(
                request, metadata=metadata, timeout=settings.timeout_s
            )

        for service, call in (("encoder", encode), ("perturb", f2i)):
            info = endpoints["services"][service]
            pids = {r["name"]: int(r["pid"]) for r in info["replicas"]}
            report[service] = drive(info["target"], call, pids, settings)
            got = report[service]
            log(
                f"  load {service}: {got['calls']} calls, errors {got['load_errors']}, "
                f"p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms, "
                + (
                    f"memory growth UNMEASURED (no RSS for {got['memory_unmeasured'] or 'any replica'})"
                    if got["max_memory_growth"] is None
                    else f"memory growth {got['max_memory_growth']:.2%}"
                )
            )
    finally:
        down(run_dir, grace_s=5.0)
    report["load_errors"] = sum(report[s]["load_errors"] for s in ("encoder", "perturb"))
    report["max_memory_growth"] = max_growth(
        {s: report[s]["max_memory_growth"] for s in ("encoder", "perturb")}
    )
    report["memory_unmeasured"] = [
        f"{s}/{name}" for s in ("encoder", "perturb") for name in report[s]["memory_unmeasured"]
    ]
    return report
