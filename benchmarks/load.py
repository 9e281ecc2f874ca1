"""Closed-loop gRPC load generators: C clients send one serialized request back to back.

Two, with one interface (``requests_per_s``, ``p50_ms``, ``p99_ms``): ``closed_loop`` (Python, grpc.aio, over
P processes) and ``closed_loop_h2load`` (nghttp2's compiled HTTP/2 load generator, Debian package
``nghttp2-client``: one native thread, C connections with one stream each), which takes a small fraction of
the CPU the Python one does, so on a small machine more of it is left to the servers being measured.

The request and the method path are raw bytes and a string, so the same code drives our Encode RPC, our
KServe v2 ``ModelInfer`` and Triton's: no client-side proto work differs between servers. Each process runs
its clients on one asyncio loop over up to 8 channels (each its own TCP connection, so SO_REUSEPORT workers
all get traffic). Splitting the same clients over more processes shows whether the generator is the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

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


class H2loadUnavailable(RuntimeError):
    """h2load is not installed or did not run."""


def grpc_frame(request: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message: flag 0, big-endian uint32 length, the bytes."""
    return struct.pack(">BI", 0, len(request)) + request


def parse_h2load(summary: str, log_lines: list[str], seconds: float) -> dict:
    """Requests/s and p50/p99 (ms) from h2load's summary and ``--log-file`` lines; raises on failed requests.

    A request counts only with HTTP status 200 (gRPC puts its own status in trailers, which h2load does not
    read: the caller checks response sizes against a real response, ``min_response_bytes``).
    """
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored", summary)
    if done is None:
        raise H2loadUnavailable(f"unexpected h2load output: {summary[-400:]}")
    succeeded, failed, errored = int(done.group(4)), int(done.group(5)), int(done.group(6))
    if failed or errored or succeeded == 0:
        raise RuntimeError(f"h2load: {succeeded} succeeded, {failed} failed, {errored} errored")
    rows = [line.split("\t") for line in log_lines if line.strip()]
    latency_ms = np.array([int(r[2]) / 1000.0 for r in rows if r[1] == "200"])
    if len(latency_ms) == 0:
        raise RuntimeError("h2load logged no successful request")
    return {
        "requests_per_s": succeeded / seconds,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
        "data_bytes_per_request": _data_bytes(summary) / succeeded,
    }


def _data_bytes(summary: str) -> int:
    match = re.search(r"\((\d+)\) data", summary)
    if match is None:
        raise H2loadUnavailable(f"no data traffic in h2load output: {summary[-400:]}")
    return int(match.group(1))


def closed_loop_h2load(target: str, method: str, request: bytes, clients: int, seconds: float,
                       threads: int = 1, min_response_bytes: int = 0) -> dict:
    """``closed_loop`` with h2load: ``clients`` connections, one stream each, for ``seconds`` after warm-up,
    driven by ``threads`` native threads (reported as ``processes``).

    ``min_response_bytes``: the size of one real response (gRPC frame included); averages below it mean the
    server answered with gRPC errors (status 200 with an error trailer) and raise.
    """
    binary = shutil.which("h2load")
    if binary is None:
        raise H2loadUnavailable("h2load not found (apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body, log = Path(tmp) / "request.bin", Path(tmp) / "requests.log"
        body.write_bytes(grpc_frame(request))
        threads = max(1, min(threads, clients))
        argv = [binary, "-c", str(clients), "-m", "1", "-t", str(threads), "-D", f"{int(seconds * 1000)}ms",
                f"--warm-up-time={int(WARM_UP_S * 1000)}ms", "-d", str(body), "--log-file", str(log),
                "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{target}{method}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            output = done.stderr[-400:] or done.stdout[-400:]
            raise H2loadUnavailable(f"h2load exited {done.returncode}: {output}")
        result = parse_h2load(done.stdout, log.read_text().splitlines(), seconds)
    if result["data_bytes_per_request"] < 0.9 * min_response_bytes:
        raise RuntimeError(f"{method}: {result['data_bytes_per_request']:.0f} response bytes per request, "
                           f"a real response has {min_response_bytes}: the server answered with errors")
    return {"clients": clients, "processes": threads, "generator": "h2load", **result}
