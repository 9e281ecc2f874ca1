"""The peer of ``encoder_serving --peer triton``: the same ONNX encoder behind a real Triton server.

PyTriton (``pip install 'reaas[triton-bench]'``, or ``make bench-triton``, which builds ``.venv-triton``)
bundles Triton's C++ gRPC front end and dynamic batcher and runs the model in a Python callable; here that
callable is an ONNX Runtime session with the thread count we serve with. Needs only numpy, onnxruntime and
nvidia-pytriton, so it runs in its own interpreter (Triton's Python stub links that interpreter's libpython).

``python benchmarks/triton_peer.py --model PATH --intra-op-threads N``: prints ``grpc-port N`` once
the model is ready, serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve the model with PyTriton, print the gRPC port, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="ONNX encoder [B, C, H, W] -> [B, D]")
    parser.add_argument("--model-name", default="encoder", help="served name (default: %(default)s)")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-queue-delay-ms", type=float, default=1.0)
    parser.add_argument("--preferred-batch-images", type=int, default=256)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, sess_options=options, providers=["CPUExecutionProvider"])
    (model_input,), model_output = session.get_inputs(), session.get_outputs()[0]
    in_shape = tuple(model_input.shape[1:])
    feature_dim = session.run(None, {model_input.name: np.zeros((1, *in_shape), np.float32)})[0].shape[1]

    @batch
    def infer(**inputs):
        images = np.ascontiguousarray(inputs[model_input.name], dtype=np.float32)
        return {model_output.name: session.run([model_output.name], {model_input.name: images})[0]}

    grpc_port = _free_port()
    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=grpc_port, http_address="127.0.0.1",
                          http_port=_free_port(), metrics_port=_free_port(), log_verbose=0)
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(args.max_queue_delay_ms * 1000),
                             preferred_batch_size=[args.preferred_batch_images])
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model_name,
            infer_func=infer,
            inputs=[Tensor(name=model_input.name, dtype=np.float32, shape=in_shape)],
            outputs=[Tensor(name=model_output.name, dtype=np.float32, shape=(feature_dim,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher),
            strict=False,
        )
        triton.run()
        print(f"grpc-port {grpc_port}", flush=True)  # Triton logs to stdout too
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())
