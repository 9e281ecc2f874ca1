"""Feature-API throughput on loopback: raw ONNX Runtime vs served, and dynamic batching vs none.

``python -m benchmarks.encoder_serving --model PATH --json`` measures, in one run:

- ``raw_images_per_s``: in-process ``OnnxEncoder.run`` on batch-256 inputs;
- ``served_images_per_s``: batch-256 Encode calls against the encoder service (a child process on
  127.0.0.1, ``benchmarks.serving``), ``served_over_raw`` their ratio (goal >= 0.8);
- for 64 concurrent closed-loop single-image clients, images/s and p50/p99 latency with dynamic batching and
  without, and ``batching_speedup`` = with / without (goal >= 2).

Without ``--model`` it serves an untrained encoder of the trainer's default shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serving import LOOPBACK, serve
from reaas.tensors import to_proto
from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common.resources import compute_threads
from services.encoder.batching import DynamicBatcher
from services.encoder.onnx_model import OnnxEncoder


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures."""

    model: str = ""
    seconds: float = 3.0  # measured window per scenario (after 0.5 s warm-up)
    batch_images: int = 256  # images per request in the raw and served-batch scenarios
    batch_clients: int = 2  # concurrent batch-256 callers
    concurrent_clients: int = 64  # single-image closed-loop callers
    max_queue_delay_ms: float = 1.0
    intra_op_threads: int = 0  # 0 = CPU quota
    execution_providers: str = ""  # passed to the server and the raw session
    seed: int = 0
    # shape of the untrained encoder served without --model (a heavier one shows batching where compute,
    # not the per-call gRPC cost, dominates)
    untrained_channels: tuple[int, ...] = (16, 32, 64)
    untrained_hidden: int = 256


def _untrained_model(directory: Path, channels: tuple[int, ...], hidden: int) -> Path:
    from reaas.onnx_export import torch_to_onnx
    from services.trainer.encoders import EncoderConfig, untrained_encoder

    strides = (1,) + (2,) * (len(channels) - 1)
    encoder = untrained_encoder(EncoderConfig(channels=channels, strides=strides, hidden_dim=hidden), seed=0)
    path = directory / "untrained-encoder.onnx"
    path.write_bytes(torch_to_onnx(encoder, (1, 28, 28)))
    return path


def raw_images_per_s(encoder: OnnxEncoder, images: np.ndarray, seconds: float) -> float:
    """In-process ``encoder.run`` throughput on ``images`` [B, C, H, W], images/s."""
    for _ in range(3):
        encoder.run(images)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.run(images)
        done += len(images)
    return done / (time.perf_counter() - started)


def in_process_concurrency(
    encoder: OnnxEncoder, image: np.ndarray, clients: int, seconds: float, batcher: DynamicBatcher | None
) -> float:
    """Images/s of ``clients`` threads each running single images back to back, through ``batcher`` or not.

    Isolates the batching queue from gRPC's per-call cost.
    """
    stop_at = time.perf_counter() + seconds
    counts = [0] * clients

    def client(i: int) -> None:
        while time.perf_counter() < stop_at:
            batcher.submit(image) if batcher is not None else encoder.run(image)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


async def _closed_loop(
    port: int, request: encoder_pb2.EncodeRequest, clients: int, seconds: float, images_per_request: int
) -> dict:
    """``clients`` callers each sending ``request`` back to back; images/s and latency percentiles (ms)."""
    latencies_s: list[float] = []
    async with grpc.aio.insecure_channel(
        f"{LOOPBACK}:{port}",
        options=[("grpc.max_receive_message_length", 1 << 28), ("grpc.max_send_message_length", 1 << 28)],
    ) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        await stub.Encode(request)
        loop = asyncio.get_running_loop()
        warm_until = loop.time() + 0.5
        stop_at = warm_until + seconds

        async def client() -> None:
            while (started := loop.time()) < stop_at:
                await stub.Encode(request, timeout=60)
                finished = loop.time()
                if started >= warm_until and finished <= stop_at:
                    latencies_s.append(finished - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    latency_ms = np.array(latencies_s) * 1000
    return {
        "images_per_s": len(latencies_s) * images_per_request / seconds,
        "requests": len(latencies_s),
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
    }


def _served(
    model: Path,
    config: BenchConfig,
    request,
    clients: int,
    images_per_request: int,
    *,
    dynamic_batching: bool,
) -> tuple[dict, str]:
    flags = [
        "--intra-op-threads", str(compute_threads(config.intra_op_threads)),
        "--max-queue-delay-ms", str(config.max_queue_delay_ms),
        "--worker-threads", "64",
        "--max-batch-size", str(max(256, config.batch_images)),
        "--dynamic-batching" if dynamic_batching else "--no-dynamic-batching",
    ]
    if config.execution_providers:
        flags += ["--execution-providers", config.execution_providers]
    with serve("encoder", model, flags) as port:
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            info = encoder_pb2_grpc.EncoderStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest())
        result = asyncio.run(_closed_loop(port, request, clients, config.seconds, images_per_request))
    return result, info.execution_provider


def run(config: BenchConfig) -> dict:
    """All scenarios; returns the report as a dict."""
    with tempfile.TemporaryDirectory() as scratch:
        model = (Path(config.model) if config.model
                 else _untrained_model(Path(scratch), config.untrained_channels, config.untrained_hidden))
        threads = compute_threads(config.intra_op_threads)
        providers = [p for p in config.execution_providers.split(",") if p]
        encoder = OnnxEncoder(model, intra_op_threads=threads, providers=providers)
        rng = np.random.default_rng(config.seed)
        batch = rng.random((config.batch_images, *encoder.input_shape), dtype=np.float32)
        raw = raw_images_per_s(encoder, batch, config.seconds)
        batcher = DynamicBatcher(
            encoder.run,
            preferred_batch_images=config.batch_images,
            max_queue_delay_ms=config.max_queue_delay_ms,
        )
        queue_batched = in_process_concurrency(
            encoder, batch[:1], config.concurrent_clients, config.seconds, batcher
        )
        batcher.close()
        queue_unbatched = in_process_concurrency(
            encoder, batch[:1], config.concurrent_clients, config.seconds, None
        )
        del encoder
        batch_request = encoder_pb2.EncodeRequest(images=to_proto(batch))
        served, provider = _served(
            model, config, batch_request, config.batch_clients, config.batch_images, dynamic_batching=True
        )
        single = encoder_pb2.EncodeRequest(images=to_proto(batch[:1]))
        batched, _ = _served(model, config, single, config.concurrent_clients, 1, dynamic_batching=True)
        unbatched, _ = _served(model, config, single, config.concurrent_clients, 1, dynamic_batching=False)
    return {
        "config": asdict(config),
        "model": config.model or (f"untrained ConvEncoder, channels {list(config.untrained_channels)}, "
                                  f"hidden {config.untrained_hidden}"),
        "execution_provider": provider,
        "intra_op_threads": threads,
        "raw_images_per_s": raw,
        "served_images_per_s": served["images_per_s"],
        "served_over_raw": served["images_per_s"] / raw,
        "served_batch": served,
        "concurrent_single_image": {
            "clients": config.concurrent_clients,
            "dynamic_batching": batched,
            "no_batching": unbatched,
        },
        "batching_speedup": batched["images_per_s"] / unbatched["images_per_s"],
        "in_process_queue": {
            "dynamic_batching_images_per_s": queue_batched,
            "no_batching_images_per_s": queue_unbatched,
            "speedup": queue_batched / queue_unbatched,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run every scenario, print the report (JSON with --json)."""
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.encoder_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", default=defaults.model, help="ONNX encoder (default: untrained, planned shape)"
    )
    parser.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="measured seconds per scenario"
    )
    parser.add_argument("--batch-images", type=int, default=defaults.batch_images)
    parser.add_argument("--batch-clients", type=int, default=defaults.batch_clients)
    parser.add_argument("--concurrent-clients", type=int, default=defaults.concurrent_clients)
    parser.add_argument("--max-queue-delay-ms", type=float, default=defaults.max_queue_delay_ms)
    parser.add_argument(
        "--intra-op-threads", type=int, default=defaults.intra_op_threads, help="0 = CPU quota"
    )
    parser.add_argument(
        "--execution-providers",
        default=defaults.execution_providers,
        help="comma-separated ONNX Runtime providers; empty = TensorRT, CUDA, CPU as available",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--untrained-channels", default=",".join(map(str, defaults.untrained_channels)),
                        help="conv widths of the untrained encoder served without --model")
    parser.add_argument("--untrained-hidden", type=int, default=defaults.untrained_hidden,
                        help="hidden width of the untrained encoder served without --model")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = vars(parser.parse_args(argv))
    args["untrained_channels"] = tuple(int(c) for c in args["untrained_channels"].split(",") if c)
    as_json = args.pop("json")
    report = run(BenchConfig(**args))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"provider {report['execution_provider']}, {report['intra_op_threads']} intra-op threads")
        print(
            f"raw {report['raw_images_per_s']:.0f} img/s, served {report['served_images_per_s']:.0f} img/s "
            f"(served_over_raw {report['served_over_raw']:.2f})"
        )
        clients = report["concurrent_single_image"]["clients"]
        for name, r in report["concurrent_single_image"].items():
            if isinstance(r, dict):
                print(
                    f"{clients} clients, {name}: {r['images_per_s']:.0f} img/s, p50 {r['p50_ms']:.2f} ms, "
                    f"p99 {r['p99_ms']:.2f} ms"
                )
        print(
            f"batching_speedup {report['batching_speedup']:.2f} (in-process queue alone: "
            f"{report['in_process_queue']['speedup']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
