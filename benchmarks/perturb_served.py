"""Served F2IPerturb latency against the in-process engine (the ``--grpc`` part of ``perturb_engine``).

``measure_served_latency`` runs the same requests through ``BoundEngine.image_radius`` in-process and through
the perturb service (a child process on 127.0.0.1, ``benchmarks.serving``, cache off) and reports p50
latencies and ``served_over_inprocess`` (goal <= 1.2). Standalone:
``python -m benchmarks.perturb_served --model PATH``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serving import LOOPBACK, serve
from reaas.methods import NORMS, PERTURB_METHODS
from reaas.tensors import to_proto
from reaas.v1 import perturb_pb2, perturb_pb2_grpc

_SERVER_MARGIN_S = 0.05  # PerturbConfig.deadline_margin_ms default


def measure_served_latency(
    model: Path,
    images: np.ndarray,
    feature_radius: np.ndarray,
    *,
    method: str = "auto",
    norm: str = "l2",
    clip_to_pixel_box: bool = False,
    relative_tolerance: float = 1e-3,
    batch_images: int = 1,
    threads: int = 1,
    timeout_s: float | None = None,
) -> dict:
    """p50/mean latency (ms) per request of ``batch_images`` images: in-process engine vs served over gRPC.

    images: [N, C, H, W] float32 in [0, 1]; feature_radius: [N] float64. Each request uses fresh images so
    neither side benefits from a cache. ``timeout_s`` (None: no deadline) is the gRPC timeout of each served
    call and, less the server's 50 ms margin, the in-process deadline: method AUTO picks its methods by the
    time left, so both sides must see the same deadline.
    """
    import torch

    from services.perturb.engine import BoundEngine

    torch.set_num_threads(threads)
    engine = BoundEngine.from_onnx(str(model))
    starts = range(0, len(images) - batch_images + 1, batch_images)
    kwargs = dict(
        norm=norm, method=method, relative_tolerance=relative_tolerance, clip_to_pixel_box=clip_to_pixel_box
    )
    engine.image_radius(images[:batch_images], feature_radius[:batch_images], **kwargs)  # warm-up
    local_s, local_radii = [], []
    for s in starts:
        t0 = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s - _SERVER_MARGIN_S
        result = engine.image_radius(
            images[s : s + batch_images], feature_radius[s : s + batch_images], deadline=deadline, **kwargs
        )
        local_s.append(time.perf_counter() - t0)
        local_radii.extend(result.image_radius.tolist())
    del engine

    served_s, served_radii = [], []
    with serve("perturb", model, ["--cache-entries", "0", "--intra-op-threads", str(threads)]) as port:
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            stub = perturb_pb2_grpc.PerturbStub(channel)

            def request(s: int) -> perturb_pb2.F2IPerturbRequest:
                return perturb_pb2.F2IPerturbRequest(
                    images=to_proto(images[s : s + batch_images]),
                    feature_radius=feature_radius[s : s + batch_images].tolist(),
                    norm=NORMS[norm],
                    method=PERTURB_METHODS[method],
                    relative_tolerance=relative_tolerance,
                    clip_to_pixel_box=clip_to_pixel_box,
                )

            stub.F2IPerturb(request(0), timeout=timeout_s)  # warm-up
            for s in starts:
                message = request(s)
                t0 = time.perf_counter()
                reply = stub.F2IPerturb(message, timeout=timeout_s)
                served_s.append(time.perf_counter() - t0)
                served_radii.extend(reply.image_radius)
    local_ms, served_ms = np.array(local_s) * 1000, np.array(served_s) * 1000
    return {
        "method": method,
        "norm": norm,
        "batch_images": batch_images,
        "requests": len(local_ms),
        "threads": threads,
        "inprocess_p50_ms": float(np.median(local_ms)),
        "inprocess_mean_ms": float(local_ms.mean()),
        "served_p50_ms": float(np.median(served_ms)),
        "served_mean_ms": float(served_ms.mean()),
        "served_over_inprocess": float(np.median(served_ms) / np.median(local_ms)),
        "timeout_s": timeout_s,
        "same_radii": bool(np.allclose(local_radii, served_radii, rtol=0, atol=0)),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, measure on random images with R_F = a fraction of the feature norm, print JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.perturb_served",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="ONNX encoder")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--batch-images", type=int, default=1)
    parser.add_argument("--method", default="auto", choices=sorted(PERTURB_METHODS))
    parser.add_argument("--norm", default="l2", choices=sorted(NORMS))
    parser.add_argument("--feature-radius", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout-s", type=float, default=None, help="per-call deadline, both sides; none if unset"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n = args.requests * args.batch_images
    images = rng.random((n, 1, 28, 28), dtype=np.float32)
    report = measure_served_latency(
        Path(args.model),
        images,
        np.full(n, args.feature_radius),
        method=args.method,
        norm=args.norm,
        batch_images=args.batch_images,
        threads=args.threads,
        timeout_s=args.timeout_s,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
