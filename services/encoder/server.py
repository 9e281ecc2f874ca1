"""Feature-API server: reaas.v1.Encoder and KServe v2 inference over one ONNX Runtime session.

The server is a grpc.aio server: a call is a coroutine on one event-loop thread, not a pool thread, and the
dynamic batcher wakes that loop once per batch. Profiled on single-image traffic, the thread pool's hand-offs
(queue the call, wake a worker, wake it again when its batch is done) cost more than the inference.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import numpy as np

from reaas.kserve.v2 import inference_pb2, inference_pb2_grpc
from reaas.tensors import decode_images, to_proto
from reaas.v1 import encoder_pb2, encoder_pb2_grpc
from services.common.config import EncoderConfig
from services.common.metrics import ServerMetrics
from services.common.model_file import ModelFile, VerifiedFacts, load_model_file, model_info, verify_model
from services.common.resources import compute_threads
from services.common.rpc import ServiceRuntime, unary_rpc
from services.common.server import ManagedServer, build_server
from services.common.status import check_model_pin
from services.encoder.batching import DynamicBatcher
from services.encoder.kserve import KServeServicer
from services.encoder.onnx_model import OnnxEncoder


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    """Encode and GetModelInfo: decode, validate, charge the quota, run, encode."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        model: ModelFile,
        encoder: OnnxEncoder,
        infer,
        max_batch_size: int,
        facts: VerifiedFacts,
    ):
        self.runtime = runtime
        self._model, self._encoder, self._infer, self._facts = model, encoder, infer, facts
        self._max_batch_size = max_batch_size

    @unary_rpc
    async def Encode(self, request, call):
        check_model_pin(request.model_sha256, self._model.sha256)
        images = decode_images(
            request.images,
            field="images",
            input_shape=self._encoder.input_shape,
            max_batch_size=self._max_batch_size,
        )
        call.charge(len(images))
        features = await self._infer(images, call.deadline())
        return encoder_pb2.EncodeResponse(features=to_proto(features), model_sha256=self._model.sha256)

    @unary_rpc
    async def GetModelInfo(self, request, call):
        return model_info(
            self._model,
            input_shape=self._encoder.input_shape,
            feature_dim=self._encoder.feature_dim,
            max_batch_size=self._max_batch_size,
            execution_provider=self._encoder.provider,
            facts=self._facts,
        )


def create_server(config: EncoderConfig) -> tuple[ManagedServer, int]:
    """Load the model, build the Feature-API server (not started) and bind it; returns (server, port)."""
    model = load_model_file(config.model_path, config.model_name)
    providers = [p.strip() for p in config.execution_providers.split(",") if p.strip()]
    encoder = OnnxEncoder(
        model.path,
        intra_op_threads=compute_threads(config.intra_op_threads),
        providers=providers,
        precision=config.served_precision,
    )
    facts = verify_model(model.path, config.served_precision)
    metrics = ServerMetrics("encoder")
    batcher = None
    if config.dynamic_batching:
        batcher = DynamicBatcher(
            encoder.run,
            preferred_batch_images=config.preferred_batch_images,
            max_queue_delay_ms=config.max_queue_delay_ms,
            on_batch=metrics.record_batch,
        )

    # without batching each call runs on its own pool thread (ONNX Runtime releases the GIL)
    pool = None if batcher is not None else futures.ThreadPoolExecutor(config.worker_threads, "encoder-infer")

    async def infer(images: np.ndarray, deadline: float | None) -> np.ndarray:
        """Features [B, D] of images [B, C, H, W], through the batcher when enabled."""
        timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        if batcher is not None:
            return await batcher.submit_async(images, timeout_s)
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(pool, encoder.run, images), timeout_s
            )
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise TimeoutError("deadline passed while waiting for inference") from exc

    def register(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        encoder_pb2_grpc.add_EncoderServicer_to_server(
            EncoderServicer(runtime, model, encoder, infer, config.max_batch_size, facts), server
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeServicer(
                runtime,
                model_name=model.name,
                input_name=encoder.input_name,
                output_name=encoder.output_name,
                input_shape=encoder.input_shape,
                feature_dim=encoder.feature_dim,
                max_batch_size=config.max_batch_size,
                infer=infer,
            ),
            server,
        )
        return [
            encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name,
            inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        ]

    on_stopped = [batcher.close] if batcher is not None else [pool.shutdown]
    server, port = build_server(config, "encoder", register, on_stopped=on_stopped, metrics=metrics,
                                asynchronous=True, reuse_port=config.reuse_port)
    server.batcher = batcher  # exposed for tests and benchmarks
    return server, port
