"""Open Inference Protocol (KServe v2) servicer on the Feature-API's port, so tritonclient works unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from reaas.kserve.v2 import inference_pb2, inference_pb2_grpc
from reaas.tensors import decode_images
from reaas.v1 import common_pb2
from services.common.rpc import ServiceRuntime, unary_rpc
from services.common.status import InvalidArgument, NotFound

_WIRE_DTYPE = {"FP32": common_pb2.FLOAT32, "FP64": common_pb2.FLOAT64, "UINT8": common_pb2.UINT8}
_TYPED_CONTENTS = {
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
    "UINT8": ("uint_contents", "u1"),
}
MODEL_VERSION = "1"


class KServeServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """ServerLive/ServerReady/ModelReady/ModelMetadata/ModelInfer for the one served encoder."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        *,
        model_name: str,
        input_name: str,
        output_name: str,
        input_shape: tuple[int, int, int],
        feature_dim: int,
        max_batch_size: int,
        infer: Callable[[np.ndarray, float | None], Awaitable[np.ndarray]],
    ):
        self.runtime = runtime
        self._model_name, self._input_name, self._output_name = model_name, input_name, output_name
        self._input_shape, self._feature_dim = input_shape, feature_dim
        self._max_batch_size = max_batch_size
        self._infer = infer  # (images [B,C,H,W] float32, deadline) -> features [B, D] float32

    def _check_model(self, name: str, version: str) -> None:
        if name != self._model_name or version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model '{name}' version '{version}' is not served; "
                f"this server has '{self._model_name}' version '{MODEL_VERSION}'"
            )

    @unary_rpc
    async def ServerLive(self, request, call):
        return inference_pb2.ServerLiveResponse(live=True)

    @unary_rpc
    async def ServerReady(self, request, call):
        return inference_pb2.ServerReadyResponse(ready=not self.runtime.draining.is_set())

    @unary_rpc
    async def ModelReady(self, request, call):
        self._check_model(request.name, request.version)
        return inference_pb2.ModelReadyResponse(ready=not self.runtime.draining.is_set())

    @unary_rpc
    async def ModelMetadata(self, request, call):
        self._check_model(request.name, request.version)
        tensor = inference_pb2.ModelMetadataResponse.TensorMetadata
        return inference_pb2.ModelMetadataResponse(
            name=self._model_name,
            versions=[MODEL_VERSION],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=self._input_name, datatype="FP32", shape=[-1, *self._input_shape])],
            outputs=[tensor(name=self._output_name, datatype="FP32", shape=[-1, self._feature_dim])],
        )

    @unary_rpc
    async def ModelInfer(self, request, call):
        self._check_model(request.model_name, request.model_version)
        images = decode_images(
            self._input_tensor(request),
            field=f"inputs[{self._input_name}]",
            input_shape=self._input_shape,
            max_batch_size=self._max_batch_size,
        )
        for requested in request.outputs:
            if requested.name != self._output_name:
                raise InvalidArgument(
                    "outputs", f"unknown output '{requested.name}'; the model has '{self._output_name}'"
                )
        call.charge(len(images))
        features = await self._infer(images, call.deadline())
        output = inference_pb2.ModelInferResponse.InferOutputTensor(
            name=self._output_name, datatype="FP32", shape=list(features.shape)
        )
        return inference_pb2.ModelInferResponse(
            model_name=self._model_name,
            model_version=MODEL_VERSION,
            id=request.id,
            outputs=[output],
            raw_output_contents=[np.ascontiguousarray(features, dtype="<f4").tobytes()],
        )

    def _input_tensor(self, request) -> common_pb2.Tensor:
        """The single input as a reaas Tensor (raw or typed contents), so one validator checks both APIs."""
        if len(request.inputs) != 1:
            raise InvalidArgument(
                "inputs", f"expected exactly one input '{self._input_name}', got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.name != self._input_name:
            raise InvalidArgument(
                "inputs", f"unknown input '{tensor.name}'; the model has '{self._input_name}'"
            )
        if tensor.datatype not in _WIRE_DTYPE:
            raise InvalidArgument(
                f"inputs[{tensor.name}].datatype",
                f"'{tensor.datatype}' not supported; use one of {sorted(_WIRE_DTYPE)}",
            )
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidArgument("raw_input_contents", "expected one entry per input")
            data = request.raw_input_contents[0]
        else:
            attribute, dtype = _TYPED_CONTENTS[tensor.datatype]
            values = getattr(tensor.contents, attribute)
            if dtype == "u1" and any(v > 255 for v in values):
                raise InvalidArgument(f"inputs[{tensor.name}].contents", "UINT8 values must be <= 255")
            data = np.asarray(values, dtype=dtype).tobytes()
        return common_pb2.Tensor(shape=list(tensor.shape), dtype=_WIRE_DTYPE[tensor.datatype], data=data)
