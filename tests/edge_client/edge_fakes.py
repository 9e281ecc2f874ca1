"""In-process fake Encoder and Perturb servicers for edge-client tests.

The fake encoder is linear, f(x) = W · flatten(x), so the exact F2IPerturb answer is R_F / sigma_max(W)
and the exact curve is U(r) = sigma_max(W) · r. Failures, a different model sha and latency can be
injected per method; every request is recorded.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np

from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, perturb_pb2, perturb_pb2_grpc

SHA_A = "a" * 64
SHA_B = "b" * 64


@dataclass
class FakeState:
    """Shared, mutable behaviour of the fake services (tests poke at it)."""

    weights: np.ndarray  # W [D, C*H*W]
    input_shape: tuple[int, int, int] = (1, 4, 4)
    sha256: str = SHA_A
    max_batch_size: int = 64
    api_key: str | None = None
    failures: dict[str, list[grpc.StatusCode]] = field(default_factory=dict)  # method -> codes to raise
    delay_s: float = 0.0
    search_completed: bool = True  # what the Perturb fakes report (False: a deadline-truncated answer)
    requests: list[tuple[str, object, tuple]] = field(default_factory=list)  # (method, request, metadata)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sigma_max(self) -> float:
        return float(np.linalg.norm(self.weights, 2))

    def features(self, images: np.ndarray) -> np.ndarray:
        return (images.reshape(images.shape[0], -1).astype(np.float64) @ self.weights.T).astype(np.float32)

    def info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo(model_name="fake-linear", model_sha256=self.sha256,
                                    input_shape=list(self.input_shape), input_min=0.0, input_max=1.0,
                                    feature_dim=self.weights.shape[0], lipschitz_bound_l2=self.sigma_max,
                                    max_batch_size=self.max_batch_size, execution_provider="fake")

    def enter(self, method: str, request, context) -> None:
        """Record, authenticate, delay, inject failures, check the sha pin."""
        metadata = tuple(context.invocation_metadata())
        with self.lock:
            self.requests.append((method, request, metadata))
            queue = self.failures.get(method, [])
            code = queue.pop(0) if queue else None
        if self.api_key is not None and ("authorization", f"Bearer {self.api_key}") not in metadata:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")
        if self.delay_s:
            time.sleep(self.delay_s)
        if code is not None:
            context.abort(code, f"injected {code.name}")
        pinned = getattr(request, "model_sha256", "")
        if pinned and pinned != self.sha256:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "model_sha256 mismatch")

    def images(self, tensor, context) -> np.ndarray:
        array = from_proto(tensor, field="images", rank=4)
        if array.shape[0] > self.max_batch_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch too large")
        return array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)

    def calls(self, method: str) -> list:
        return [r for m, r, _ in self.requests if m == method]


class FakeEncoder(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, state: FakeState):
        self.state = state

    def Encode(self, request, context):
        self.state.enter("Encode", request, context)
        feats = self.state.features(self.state.images(request.images, context))
        return encoder_pb2.EncodeResponse(features=to_proto(feats), model_sha256=self.state.sha256)

    def GetModelInfo(self, request, context):
        self.state.enter("Encoder.GetModelInfo", request, context)
        return self.state.info()


class FakePerturb(perturb_pb2_grpc.PerturbServicer):
    def __init__(self, state: FakeState):
        self.state = state

    def F2IPerturb(self, request, context):
        self.state.enter("F2IPerturb", request, context)
        images = self.state.images(request.images, context)
        if len(request.feature_radius) != images.shape[0]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one feature radius per image")
        radii = [float(np.nextafter(rf / self.state.sigma_max, 0.0)) for rf in request.feature_radius]
        return perturb_pb2.F2IPerturbResponse(image_radius=radii,
                                              method_used=[common_pb2.LIPSCHITZ] * len(radii),
                                              model_sha256=self.state.sha256,
                                              search_completed=self.state.search_completed)

    def F2IPerturbCurve(self, request, context):
        self.state.enter("F2IPerturbCurve", request, context)
        images = self.state.images(request.images, context)
        k = request.num_radii or 64
        lo, hi = (request.min_radius or 1e-3), (request.max_radius or 4.0)
        ladder = lo * (hi / lo) ** (np.arange(k) / (k - 1))
        curve = perturb_pb2.RadiusCurve(image_radius=ladder.tolist(),
                                        feature_shift_bound=(self.state.sigma_max * ladder).tolist())
        return perturb_pb2.F2IPerturbCurveResponse(
            features=to_proto(self.state.features(images)), curves=[curve] * images.shape[0],
            method_used=[common_pb2.LIPSCHITZ] * images.shape[0], model_sha256=self.state.sha256,
            search_completed=self.state.search_completed)

    def F2ISemantic(self, request, context):
        """Exact ranges of a linear encoder: R_F / ‖W1‖ (brightness) or R_F / ‖Wx‖ (contrast)."""
        self.state.enter("F2ISemantic", request, context)
        images = self.state.images(request.images, context)
        flat = images.reshape(images.shape[0], -1).astype(np.float64)
        directions = np.ones_like(flat) if request.perturbation == perturb_pb2.BRIGHTNESS else flat
        norms = np.linalg.norm(directions @ self.state.weights.T, axis=1)
        ranges = [float(np.nextafter(rf / n, 0.0))
                  for rf, n in zip(request.feature_radius, norms, strict=True)]
        zeros = [0.0] * len(ranges)
        brightness = request.perturbation == perturb_pb2.BRIGHTNESS
        return perturb_pb2.F2ISemanticResponse(
            brightness=ranges if brightness else zeros, contrast=zeros if brightness else ranges,
            l2_equivalent=zeros, method_used=[common_pb2.CROWN] * len(ranges), model_sha256=self.state.sha256,
            search_completed=self.state.search_completed)

    def GetModelInfo(self, request, context):
        self.state.enter("Perturb.GetModelInfo", request, context)
        return self.state.info()


def create_fake_server(state: FakeState, server_credentials=None, max_message_bytes: int = 64 * 2**20,
                       port: int = 0) -> tuple[grpc.Server, int]:
    """Both fake services on 127.0.0.1:<port> (0 = any free port); returns (started server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes)])
    encoder_pb2_grpc.add_EncoderServicer_to_server(FakeEncoder(state), server)
    perturb_pb2_grpc.add_PerturbServicer_to_server(FakePerturb(state), server)
    if server_credentials is None:
        port = server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        port = server.add_secure_port(f"127.0.0.1:{port}", server_credentials)
    server.start()
    return server, port


def linear_state(feature_dim: int = 8, input_shape=(1, 4, 4), seed: int = 0, **kwargs) -> FakeState:
    """A FakeState with a seeded random linear encoder."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((feature_dim, int(np.prod(input_shape)))) / np.sqrt(np.prod(input_shape))
    return FakeState(weights=weights, input_shape=tuple(input_shape), **kwargs)


def small_problem(num: int = 12, seed: int = 0):
    """Deterministic images [num, 1, 4, 4], labels [num] and an MLP over the fake encoder's features."""
    from edge_client.mlp import feature_spread, init_mlp

    state = linear_state(seed=seed)
    rng = np.random.default_rng(seed + 100)
    images = rng.random((num, 1, 4, 4), dtype=np.float32)
    features = state.features(images)
    model = init_mlp(features.shape[1], (16, 16), 3, features.mean(axis=0), feature_spread(features), rng)
    labels = model.predict(features)
    labels[::4] = (labels[::4] + 1) % 3  # some wrong predictions
    return images, labels, model
