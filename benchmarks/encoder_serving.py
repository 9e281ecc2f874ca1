"""Feature-API throughput on loopback: raw ONNX Runtime vs served, and dynamic batching vs none.

``python -m benchmarks.encoder_serving --model PATH --json`` measures, in one run:

- ``raw_images_per_s``: in-process ``OnnxEncoder.run`` on batch-256 inputs;
- ``served_images_per_s``: batch-256 Encode calls against the encoder service (a child process on
  127.0.0.1, ``benchmarks.serving``), ``served_over_raw`` their ratio (goal >= 0.8);
- for 64 concurrent closed-loop single-image clients, images/s and p50/p99 latency with dynamic batching and
  without, and ``batching_speedup`` = with / without (goal >= 2).

Without ``--model`` it serves an untrained encoder of the trainer's default shape.

``--peer triton`` instead serves the same model with PyTriton (a real Triton Inference Server: C++ gRPC front
end and dynamic batcher, ONNX Runtime with the same thread count in its Python callable; run under
``--peer-python``, which ``make bench-triton`` builds) and drives both with one load generator
(benchmarks/load.py) at 1, 8, 64 and 256 concurrent single-image clients: our ``Encode``, our KServe v2
``ModelInfer`` and Triton's ``ModelInfer`` (byte-identical requests). It reports requests/s, p50/p99 and
``ours_over_triton`` (the lower of Encode and KServe over Triton, per concurrency), checks the load generator
by splitting the 64 clients over two processes, and with ``--scaling-workers 1,2`` the ``--workers`` curve.
Without a working PyTriton it says so and exits 2.
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

from benchmarks.load import H2loadUnavailable, closed_loop, closed_loop_h2load, grpc_frame
from benchmarks.serving import LOOPBACK, TRITON_VENV_PYTHON, PeerUnavailable, serve, serve_triton_peer
from reaas.kserve.v2 import inference_pb2, inference_pb2_grpc
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
    # --peer triton
    peer: str = ""  # "" (the scenarios above) or "triton"
    peer_python: str = str(TRITON_VENV_PYTHON)  # an interpreter with nvidia-pytriton and onnxruntime
    peer_concurrency: tuple[int, ...] = (1, 8, 64, 256)  # single-image clients
    client_processes: int = 1  # load-generator processes (h2load: native threads; the check at 64 uses 2)
    load_generator: str = "python"  # "python" (benchmarks/load.py, grpc.aio) or "h2load" (compiled, nghttp2)
    workers: int = 1  # our server's --workers
    scaling_workers: tuple[int, ...] = ()  # --workers values for the scaling curve (64 clients, Encode)


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


ENCODE = "/reaas.v1.Encoder/Encode"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SCALING_CLIENTS = 64


def _server_flags(config: BenchConfig, threads: int, workers: int) -> list[str]:
    return ["--intra-op-threads", str(threads), "--max-queue-delay-ms", str(config.max_queue_delay_ms),
            "--preferred-batch-images", str(config.batch_images), "--workers", str(workers),
            *(["--execution-providers", config.execution_providers] if config.execution_providers else [])]


def _requests(port: int, image: np.ndarray) -> tuple[bytes, bytes]:
    """Serialized single-image Encode and ModelInfer requests for the model served on ``port``."""
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        kserve = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        name = encoder_pb2_grpc.EncoderStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest()).model_name
        metadata = kserve.ModelMetadata(inference_pb2.ModelMetadataRequest(name=name))
    encode = encoder_pb2.EncodeRequest(images=to_proto(image))
    infer = inference_pb2.ModelInferRequest(
        model_name=metadata.name,
        inputs=[inference_pb2.ModelInferRequest.InferInputTensor(
            name=metadata.inputs[0].name, datatype="FP32", shape=list(image.shape))],
        raw_input_contents=[np.ascontiguousarray(image, dtype="<f4").tobytes()],
    )
    return encode.SerializeToString(), infer.SerializeToString()


def _response_bytes(target: str, method: str, request: bytes) -> int:
    """Size of one real response to ``request`` as a gRPC frame (h2load's check that calls succeeded)."""
    with grpc.insecure_channel(target) as channel:
        return len(grpc_frame(channel.unary_unary(method)(request, timeout=60)))


def _load_generator(name: str, response_bytes: dict[tuple[str, str], int]):
    """``closed_loop(target, method, request, clients, seconds, processes)`` of the chosen generator."""
    if name == "python":
        return closed_loop
    if name != "h2load":
        raise ValueError(f"unknown load generator {name!r} (python, h2load)")

    def h2load(target: str, method: str, request: bytes, clients: int, seconds: float, processes: int = 1):
        return closed_loop_h2load(target, method, request, clients, seconds, processes,
                                  response_bytes[(target, method)])

    return h2load


def compare_with_triton(model: Path, config: BenchConfig) -> dict:
    """Ours (Encode, KServe) against Triton on the same model and load; see the module docstring."""
    threads = compute_threads(config.intra_op_threads)
    peer_flags = ["--intra-op-threads", str(threads), "--max-queue-delay-ms", str(config.max_queue_delay_ms),
                  "--preferred-batch-images", str(config.batch_images)]
    rng = np.random.default_rng(config.seed)
    seconds, processes = config.seconds, config.client_processes
    # the same compute threads in all: N workers share them (CPUs / N each, as `--workers` does with 0)
    ours_threads = threads if config.workers == 1 else max(1, threads // config.workers)
    with serve("encoder", model, _server_flags(config, ours_threads, config.workers)) as ours_port:
        with grpc.insecure_channel(f"{LOOPBACK}:{ours_port}") as channel:
            info = encoder_pb2_grpc.EncoderStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest())
        image = rng.random((1, *info.input_shape), dtype=np.float32)
        encode, infer = _requests(ours_port, image)
        peer_flags += ["--model-name", info.model_name]
        with serve_triton_peer(model, Path(config.peer_python), peer_flags) as peer:
            ours, triton = f"{LOOPBACK}:{ours_port}", f"{LOOPBACK}:{peer}"
            drive = _load_generator(config.load_generator, {
                (ours, ENCODE): _response_bytes(ours, ENCODE, encode),
                (ours, MODEL_INFER): _response_bytes(ours, MODEL_INFER, infer),
                (triton, MODEL_INFER): _response_bytes(triton, MODEL_INFER, infer),
            })
            rows = {}
            for clients in config.peer_concurrency:
                rows[str(clients)] = {
                    "ours_encode": drive(ours, ENCODE, encode, clients, seconds, processes),
                    "ours_kserve": drive(ours, MODEL_INFER, infer, clients, seconds, processes),
                    "triton": drive(triton, MODEL_INFER, infer, clients, seconds, processes),
                }
            check_clients = 64 if 64 in config.peer_concurrency else config.peer_concurrency[-1]
            split = {
                "clients": check_clients,
                "processes": 2,
                "ours_kserve": drive(ours, MODEL_INFER, infer, check_clients, seconds, 2),
                "triton": drive(triton, MODEL_INFER, infer, check_clients, seconds, 2),
            }
    one = rows[str(check_clients)]
    split["ours_kserve_two_over_one"] = (split["ours_kserve"]["requests_per_s"]
                                         / one["ours_kserve"]["requests_per_s"])
    split["triton_two_over_one"] = split["triton"]["requests_per_s"] / one["triton"]["requests_per_s"]
    scaling = {}
    for workers in config.scaling_workers:
        with serve("encoder", model, _server_flags(config, 0, workers)) as port:
            target = f"{LOOPBACK}:{port}"
            drive = _load_generator(config.load_generator,
                                          {(target, ENCODE): _response_bytes(target, ENCODE, encode)})
            scaling[str(workers)] = drive(target, ENCODE, encode, SCALING_CLIENTS, seconds, 2)
    base = scaling.get(str(config.scaling_workers[0])) if config.scaling_workers else None

    def ratio(row: dict, ours_key: str) -> float:
        return row[ours_key]["requests_per_s"] / row["triton"]["requests_per_s"]

    return {
        "config": asdict(config),
        "model": str(model),
        "peer": "triton (nvidia-pytriton, ONNX Runtime in the callable, dynamic batching on)",
        "load_generator": config.load_generator,
        "intra_op_threads": threads,
        "ours_intra_op_threads_per_worker": ours_threads,
        "workers": config.workers,
        "concurrency": rows,
        "encode_over_triton": {c: ratio(r, "ours_encode") for c, r in rows.items()},
        "kserve_over_triton": {c: ratio(r, "ours_kserve") for c, r in rows.items()},
        "ours_over_triton": {c: min(ratio(r, "ours_encode"), ratio(r, "ours_kserve"))
                             for c, r in rows.items()},
        "p99_ours_over_triton": {c: max(r["ours_encode"]["p99_ms"], r["ours_kserve"]["p99_ms"])
                                 / r["triton"]["p99_ms"] for c, r in rows.items()},
        "load_generator_check": split,
        "scaling": {
            "clients": SCALING_CLIENTS,
            "requests_per_s": {w: r["requests_per_s"] for w, r in scaling.items()},
            "over_first": {w: r["requests_per_s"] / base["requests_per_s"] for w, r in scaling.items()},
        } if scaling else {},
    }


def _print_peer(report: dict) -> None:
    print(f"{report['model']}: ours ({report['workers']} worker(s)) vs {report['peer']}, "
          f"{report['intra_op_threads']} intra-op threads each")
    print(f"{'clients':>7} | {'Encode req/s':>12} {'p50':>6} {'p99':>6} | {'KServe req/s':>12} {'p50':>6} "
          f"{'p99':>6} | {'Triton req/s':>12} {'p50':>6} {'p99':>6} | ours/Triton")
    for clients, row in report["concurrency"].items():
        cells = " | ".join(f"{row[k]['requests_per_s']:12.0f} {row[k]['p50_ms']:6.2f} {row[k]['p99_ms']:6.2f}"
                           for k in ("ours_encode", "ours_kserve", "triton"))
        print(f"{clients:>7} | {cells} | {report['ours_over_triton'][clients]:.2f} "
              f"(Encode {report['encode_over_triton'][clients]:.2f}, "
              f"KServe {report['kserve_over_triton'][clients]:.2f})")
    check = report["load_generator_check"]
    print(f"load generator ({report['load_generator']}), {check['clients']} clients over 2 processes vs 1: "
          f"ours KServe "
          f"{check['ours_kserve_two_over_one']:.2f}x, Triton {check['triton_two_over_one']:.2f}x")
    if report["scaling"]:
        curve = ", ".join(f"{w} worker(s) {rps:.0f} req/s ({report['scaling']['over_first'][w]:.2f}x)"
                          for w, rps in report["scaling"]["requests_per_s"].items())
        print(f"--workers scaling, {report['scaling']['clients']} clients: {curve}")


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
    parser.add_argument("--peer", choices=["triton"], default=None,
                        help="compare single-image serving with Triton (PyTriton) instead")
    parser.add_argument("--peer-python", default=defaults.peer_python,
                        help="interpreter with nvidia-pytriton for --peer (`make bench-triton` builds it)")
    parser.add_argument("--peer-concurrency", default=",".join(map(str, defaults.peer_concurrency)),
                        help="single-image client counts for --peer")
    parser.add_argument("--client-processes", type=int, default=defaults.client_processes,
                        help="load-generator processes for --peer")
    parser.add_argument("--load-generator", choices=["python", "h2load"], default=defaults.load_generator,
                        help="--peer: benchmarks/load.py (grpc.aio) or h2load (compiled; apt-get install "
                             "nghttp2-client), which leaves the servers more of a small machine's CPU")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="our server's --workers for --peer")
    parser.add_argument("--scaling-workers", default="",
                        help="comma-separated --workers values for the scaling curve (--peer), e.g. 1,2")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = vars(parser.parse_args(argv))
    args["untrained_channels"] = tuple(int(c) for c in args["untrained_channels"].split(",") if c)
    args["peer_concurrency"] = tuple(int(c) for c in args["peer_concurrency"].split(",") if c)
    args["scaling_workers"] = tuple(int(c) for c in args["scaling_workers"].split(",") if c)
    args["peer"] = args["peer"] or ""
    as_json = args.pop("json")
    config = BenchConfig(**args)
    if config.peer:
        try:
            with tempfile.TemporaryDirectory() as scratch:
                model = Path(config.model) if config.model else _untrained_model(
                    Path(scratch), config.untrained_channels, config.untrained_hidden)
                report = compare_with_triton(model, config)
        except (PeerUnavailable, H2loadUnavailable) as exc:
            print(f"--peer triton: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2)) if as_json else _print_peer(report)
        return 0
    report = run(config)
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
