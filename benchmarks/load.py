"""A closed-loop gRPC load generator: C clients send one serialized request back to back, over P processes.

The request and the method path are raw bytes and a string, so the same code drives our Encode RPC, our
KServe v2 ``ModelInfer`` and Triton's: no client-side proto work differs between servers. Each process runs
its clients on one asyncio loop over up to 8 channels (each its own TCP connection, so SO_REUSEPORT workers
all get traffic). Splitting the same clients over more processes shows whether the generator is the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import grpc
import numpy as np

WARM_UP_S = 0.5
_CHANNELS_PER_PROCESS = 8


async def _clients(target: str, method: str, request: bytes, clients: int, seconds: float) -> list[float]:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 1 << 28)]
    channels = [grpc.aio.insecure_channel(target, options=options)
                for _ in range(max(1, min(clients, _CHANNELS_PER_PROCESS)))]
    calls = [c.unary_unary(method) for c in channels]  # bytes in, bytes out
    for call in calls:
        await call(request, timeout=60)
    loop = asyncio.get_running_loop()
    warm_until = loop.time() + WARM_UP_S
    stop_at = warm_until + seconds
    latencies_s: list[float] = []

    async def client(call) -> None:
        while (started := loop.time()) < stop_at:
            await call(request, timeout=60)
            finished = loop.time()
            if started >= warm_until and finished <= stop_at:
                latencies_s.append(finished - started)

    await asyncio.gather(*(client(calls[i % len(calls)]) for i in range(clients)))
    for channel in channels:
        await channel.close()
    return latencies_s


def _run_process(target: str, method: str, request: bytes, clients: int, seconds: float) -> list[float]:
    return asyncio.run(_clients(target, method, request, clients, seconds))


def closed_loop(target: str, method: str, request: bytes, clients: int, seconds: float,
                processes: int = 1) -> dict:
    """Requests/s and latency p50/p99 (ms) of ``clients`` closed-loop callers split over ``processes``."""
    processes = max(1, min(processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_run_process, [target] * processes, [method] * processes,
                              [request] * processes, shares, [seconds] * processes))
    latency_ms = np.concatenate([np.asarray(p) for p in parts]) * 1000
    if len(latency_ms) == 0:
        raise RuntimeError(f"no call to {method} on {target} finished in {seconds} s "
                           f"({time.perf_counter() - started:.1f} s)")
    return {
        "clients": clients,
        "processes": processes,
        "requests_per_s": len(latency_ms) / seconds,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
    }
