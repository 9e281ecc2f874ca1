"""Client SDK for the Encoder (Feature-API) and Perturb (F2IPerturb-API) services.

Batches are split under the message-size limit and the server's max_batch_size; every attempt has a
deadline; UNAVAILABLE, RESOURCE_EXHAUSTED and (server-side) CANCELLED are retried with exponential
backoff and jitter (all calls are idempotent); the API key travels as ``authorization: Bearer <key>``
metadata; queries (images sent) and bytes (serialized request + response sizes) are counted; and the
model's sha256 is pinned on first contact and sent with every request, so features and radii from
different encoders are never mixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from reaas.methods import METHOD_NAMES, NORMS, PERTURB_METHODS
from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, perturb_pb2, perturb_pb2_grpc

# Every call is idempotent, so these are retried. CANCELLED too: a blocking call of this client is never
# cancelled by the client itself, so it means the server cancelled it — a replica stopping (SIGTERM drain
# past its grace) cancels its in-flight calls (seen in the fault suite when perturb restarts mid-query).
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.CANCELLED})
_NORMS = NORMS
_METHODS = PERTURB_METHODS
_METHOD_NAMES = METHOD_NAMES
_MESSAGE_OVERHEAD_BYTES = 4096  # headroom for shapes, sha, usage and framing in one message


class ClientError(RuntimeError):
    """A call failed for a reason the caller should see (not retried, or out of retries)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class ModelMismatchError(ClientError):
    """The served model's sha256 differs from the pinned one; results must not be mixed."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, equal jitter: delay_k in [cap_k/2, cap_k], cap_k = min(max, initial * m^k)."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def delay_s(self, retry_index: int, rng: np.random.Generator) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** retry_index)
        return float(cap / 2 + rng.uniform(0.0, cap / 2))


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to reach one service."""

    target: str  # host:port
    api_key: str | None = None
    tls: bool = False
    root_certificates_pem: bytes | None = None  # None with tls=True: the system roots
    timeout_s: float = 120.0  # deadline of each attempt
    max_message_bytes: int = 4 * 1024 * 1024  # per request and per response
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    jitter_seed: int = 0
    expected_model_sha256: str | None = None  # pin in advance; otherwise pinned on first contact


@dataclass
class UsageCounter:
    """Queries (images sent), bytes (serialized request + response) and calls, accumulated on success."""

    queries: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    calls: int = 0
    retries: int = 0
    control_bytes: int = 0  # GetModelInfo traffic, not attributable to inputs

    @property
    def bytes(self) -> int:
        """Request plus response bytes of the image-carrying calls."""
        return self.request_bytes + self.response_bytes

    def snapshot(self) -> UsageCounter:
        """A copy of the current totals."""
        return UsageCounter(self.queries, self.request_bytes, self.response_bytes, self.calls, self.retries,
                            self.control_bytes)

    def since(self, earlier: UsageCounter) -> UsageCounter:
        """Totals accumulated after ``earlier`` (a snapshot)."""
        return UsageCounter(self.queries - earlier.queries, self.request_bytes - earlier.request_bytes,
                            self.response_bytes - earlier.response_bytes, self.calls - earlier.calls,
                            self.retries - earlier.retries, self.control_bytes - earlier.control_bytes)


class ModelPin:
    """The sha256 of the one encoder this client talks to; share one pin between Encoder and Perturb."""

    def __init__(self, sha256: str | None = None):
        self.sha256 = sha256 or None

    def check(self, sha256: str, source: str) -> None:
        """Pin on first contact; raise ModelMismatchError if a later answer names another model."""
        if not sha256:
            raise ModelMismatchError(f"{source}: the server sent no model_sha256")
        if self.sha256 is None:
            self.sha256 = sha256
        elif sha256 != self.sha256:
            raise ModelMismatchError(f"{source}: served model {sha256[:12]}… differs from the pinned "
                                     f"{self.sha256[:12]}…; refusing to mix results of different encoders")


def make_channel(config: ClientConfig) -> grpc.Channel:
    """A gRPC channel with the message-size limits, TLS when asked, round_robin over every resolved address.

    round_robin spreads calls over all replicas of a multi-address target (``ipv4:h:p1,h:p2``, a headless
    Service's DNS name); the default pick_first would send everything to one until it fails.
    """
    options = [("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.lb_policy_name", "round_robin")]
    if config.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=config.root_certificates_pem)
        return grpc.secure_channel(config.target, credentials, options=options)
    return grpc.insecure_channel(config.target, options=options)


def batch_limit(max_batch_size: int, max_message_bytes: int, request_bytes_per_item: int,
                response_bytes_per_item: int) -> int:
    """Largest batch whose request and response both stay under the message limit (at least 1)."""
    per_item = max(request_bytes_per_item, response_bytes_per_item, 1)
    by_size = (max_message_bytes - _MESSAGE_OVERHEAD_BYTES) // per_item
    return int(max(1, min(max_batch_size if max_batch_size > 0 else by_size, by_size)))


class _ServiceClient:
    """Shared call machinery: metadata, deadlines, retries, counting, pinning."""

    _service = "service"

    def __init__(self, config: ClientConfig, *, pin: ModelPin | None = None,
                 counter: UsageCounter | None = None, channel: grpc.Channel | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.pin = pin if pin is not None else ModelPin(config.expected_model_sha256)
        if config.expected_model_sha256 and self.pin.sha256 not in (None, config.expected_model_sha256):
            raise ModelMismatchError("expected_model_sha256 differs from the shared pin")
        self.pin.sha256 = self.pin.sha256 or config.expected_model_sha256
        self.usage = counter if counter is not None else UsageCounter()
        self._own_channel = channel is None
        self._channel = channel if channel is not None else make_channel(config)
        self._sleep = sleep
        self._rng = np.random.default_rng(config.jitter_seed)
        self._info: common_pb2.ModelInfo | None = None
        self._metadata = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()

    def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._own_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: Callable, request, name: str):
        """One unary call with deadline and retries on UNAVAILABLE / RESOURCE_EXHAUSTED / CANCELLED."""
        policy = self.config.retry
        for attempt in range(policy.max_attempts):
            try:
                return method(request, timeout=self.config.timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                details = error.details() if hasattr(error, "details") else str(error)
                if code in RETRYABLE_CODES and attempt + 1 < policy.max_attempts:
                    self.usage.retries += 1
                    self._sleep(policy.delay_s(attempt, self._rng))
                    continue
                message = f"{self._service}.{name} failed: {getattr(code, 'name', code)}: {details}"
                if code in RETRYABLE_CODES:
                    message += f" (after {policy.max_attempts} attempts)"
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise ModelMismatchError(message, code) from error
                raise ClientError(message, code) from error
        raise AssertionError("unreachable")

    def _count(self, request, response, queries: int) -> None:
        self.usage.queries += queries
        self.usage.request_bytes += request.ByteSize()
        self.usage.response_bytes += response.ByteSize()
        self.usage.calls += 1

    def model_info(self) -> common_pb2.ModelInfo:
        """The served model's ModelInfo (fetched once, pins its sha256)."""
        if self._info is None:
            request = common_pb2.GetModelInfoRequest()
            info = self._call(self._stub.GetModelInfo, request, "GetModelInfo")
            self.pin.check(info.model_sha256, f"{self._service}.GetModelInfo")
            self.usage.control_bytes += request.ByteSize() + info.ByteSize()
            self._info = info
        return self._info

    def _image_batches(self, images: np.ndarray, response_bytes_per_item: int):
        """Validate images [N, C, H, W] and yield (start, batch) under the size and batch limits."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            images = images.astype(np.float32, copy=False)
        info = self.model_info()
        expected = tuple(int(s) for s in info.input_shape)
        if images.ndim != 4 or (expected and images.shape[1:] != expected):
            raise ValueError(f"images must be [N, {', '.join(map(str, expected))}], got {list(images.shape)}")
        per_image = int(np.prod(images.shape[1:])) * images.dtype.itemsize + 32
        limit = batch_limit(int(info.max_batch_size), self.config.max_message_bytes, per_image,
                            response_bytes_per_item)
        for start in range(0, images.shape[0], limit):
            yield start, images[start:start + limit]


class EncoderClient(_ServiceClient):
    """The Feature-API: ``encode(images) -> features``; one query per image."""

    _service = "Encoder"

    def __init__(self, config: ClientConfig, **kwargs):
        super().__init__(config, **kwargs)
        self._stub = encoder_pb2_grpc.EncoderStub(self._channel)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Features [N, D] float32 of images [N, C, H, W] (float32 in [0, 1] or uint8)."""
        info = self.model_info()
        outputs = []
        for _, batch in self._image_batches(images, 4 * int(info.feature_dim) + 32):
            request = encoder_pb2.EncodeRequest(images=to_proto(batch), model_sha256=self.pin.sha256 or "")
            response = self._call(self._stub.Encode, request, "Encode")
            self.pin.check(response.model_sha256, "Encoder.Encode")
            features = from_proto(response.features, field="features", rank=2)
            if features.shape[0] != batch.shape[0]:
                raise ClientError(f"Encode returned {features.shape[0]} rows for {batch.shape[0]} images")
            self._count(request, response, batch.shape[0])
            outputs.append(np.asarray(features, dtype=np.float32))
        if not outputs:
            return np.zeros((0, int(info.feature_dim)), dtype=np.float32)
        return np.concatenate(outputs, axis=0)


@dataclass(frozen=True)
class RadiusAnswer:
    """F2IPerturb answer: image radii [N] float64, the method per image, and ``search_completed``: False
    when the server's AUTO search stopped at the deadline for some batch (radii sound, possibly smaller).

    Unpacks as ``radii, methods = client.f2i(...)``.
    """

    image_radius: np.ndarray
    methods_used: list[str]
    search_completed: bool

    def __iter__(self):
        return iter((self.image_radius, self.methods_used))


@dataclass(frozen=True)
class CurveResult:
    """F2IPerturbCurve answer: features [N, D] and per image (image_radius [K], feature_shift_bound [K]);
    ``search_completed`` is False when the server's AUTO curve stopped at the deadline for some batch
    (bounds sound, possibly looser)."""

    features: np.ndarray
    curves: list[tuple[np.ndarray, np.ndarray]]
    methods_used: list[str]
    search_completed: bool


@dataclass
class SemanticAnswer:
    """F2ISemantic answer per image [N]: certified B and C, the l2-implied parameter radius, methods, and
    whether every server-side search of every batch ran to its tolerance."""

    brightness: np.ndarray
    contrast: np.ndarray
    l2_equivalent: np.ndarray
    methods_used: list[str]
    search_completed: bool


_SEMANTIC = {"brightness": perturb_pb2.BRIGHTNESS, "contrast": perturb_pb2.CONTRAST,
             "brightness_contrast": perturb_pb2.BRIGHTNESS_CONTRAST}


class PerturbClient(_ServiceClient):
    """The F2IPerturb-API: ``f2i(images, feature_radii) -> image radii``, ``curve(images)``."""

    _service = "Perturb"

    def __init__(self, config: ClientConfig, **kwargs):
        super().__init__(config, **kwargs)
        self._stub = perturb_pb2_grpc.PerturbStub(self._channel)

    def f2i(self, images: np.ndarray, feature_radii: np.ndarray, *, norm: str = "l2", method: str = "auto",
            relative_tolerance: float = 0.0, clip_to_pixel_box: bool = False) -> RadiusAnswer:
        """Certified image radii [N] float64 for feature radii R_F [N], the method used per image, and
        whether every search completed (unpacks as ``radii, methods``)."""
        feature_radii = np.asarray(feature_radii, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(feature_radii)) or np.any(feature_radii < 0):
            raise ValueError("feature radii must be finite and >= 0")
        if feature_radii.shape[0] != np.asarray(images).shape[0]:
            raise ValueError(f"{feature_radii.shape[0]} feature radii for {len(images)} images")
        radii, methods, completed = [], [], True
        for start, batch in self._image_batches(images, 32):
            request = perturb_pb2.F2IPerturbRequest(
                images=to_proto(batch), feature_radius=feature_radii[start:start + batch.shape[0]].tolist(),
                norm=_NORMS[norm], method=_METHODS[method], relative_tolerance=relative_tolerance,
                model_sha256=self.pin.sha256 or "", clip_to_pixel_box=clip_to_pixel_box)
            response = self._call(self._stub.F2IPerturb, request, "F2IPerturb")
            self.pin.check(response.model_sha256, "Perturb.F2IPerturb")
            if len(response.image_radius) != batch.shape[0]:
                raise ClientError(f"F2IPerturb: {len(response.image_radius)} radii for {batch.shape[0]}")
            self._count(request, response, batch.shape[0])
            radii.extend(response.image_radius)
            methods.extend(_METHOD_NAMES.get(m, str(m)) for m in response.method_used)
            completed = completed and response.search_completed
        return RadiusAnswer(np.asarray(radii, dtype=np.float64), methods, completed)

    def semantic(self, images: np.ndarray, feature_radii: np.ndarray, *, perturbation: str = "brightness",
                 method: str = "auto", relative_tolerance: float = 0.0,
                 contrast_per_brightness: float = 0.0) -> SemanticAnswer:
        """Certified brightness |b| <= B / contrast |c-1| <= C for feature radii R_F [N] (unclipped)."""
        feature_radii = np.asarray(feature_radii, dtype=np.float64).reshape(-1)
        if feature_radii.shape[0] != np.asarray(images).shape[0]:
            raise ValueError(f"{feature_radii.shape[0]} feature radii for {len(images)} images")
        parts: list[list[float]] = [[], [], []]
        methods: list[str] = []
        completed = True
        for start, batch in self._image_batches(images, 32):
            request = perturb_pb2.F2ISemanticRequest(
                images=to_proto(batch), feature_radius=feature_radii[start:start + batch.shape[0]].tolist(),
                perturbation=_SEMANTIC[perturbation], method=_METHODS[method],
                relative_tolerance=relative_tolerance, model_sha256=self.pin.sha256 or "",
                contrast_per_brightness=contrast_per_brightness)
            response = self._call(self._stub.F2ISemantic, request, "F2ISemantic")
            self.pin.check(response.model_sha256, "Perturb.F2ISemantic")
            if len(response.brightness) != batch.shape[0]:
                raise ClientError(f"F2ISemantic: {len(response.brightness)} answers for {batch.shape[0]}")
            self._count(request, response, batch.shape[0])
            for out, values in zip(parts, (response.brightness, response.contrast, response.l2_equivalent),
                                   strict=True):
                out.extend(values)
            methods.extend(_METHOD_NAMES.get(m, str(m)) for m in response.method_used)
            completed = completed and response.search_completed
        b, c, l2 = (np.asarray(p, dtype=np.float64) for p in parts)
        return SemanticAnswer(b, c, l2, methods, completed)

    def curve(self, images: np.ndarray, *, norm: str = "l2", method: str = "auto", num_radii: int = 0,
              min_radius: float = 0.0, max_radius: float = 0.0, clip_to_pixel_box: bool = False
              ) -> CurveResult:
        """One query per image: features f(x) and the curve (r_k, U(r_k)) of each image."""
        info = self.model_info()
        per_image = 4 * int(info.feature_dim) + 20 * (num_radii or 64) + 64
        features, curves, methods = [], [], []
        completed = True
        for _, batch in self._image_batches(images, per_image):
            request = perturb_pb2.F2IPerturbCurveRequest(
                images=to_proto(batch), norm=_NORMS[norm], method=_METHODS[method],
                model_sha256=self.pin.sha256 or "", clip_to_pixel_box=clip_to_pixel_box,
                num_radii=num_radii, min_radius=min_radius, max_radius=max_radius)
            response = self._call(self._stub.F2IPerturbCurve, request, "F2IPerturbCurve")
            self.pin.check(response.model_sha256, "Perturb.F2IPerturbCurve")
            part = from_proto(response.features, field="features", rank=2)
            if part.shape[0] != batch.shape[0] or len(response.curves) != batch.shape[0]:
                raise ClientError("F2IPerturbCurve answered a different number of images than sent")
            self._count(request, response, batch.shape[0])
            features.append(np.asarray(part, dtype=np.float32))
            curves.extend((np.asarray(c.image_radius, dtype=np.float64),
                           np.asarray(c.feature_shift_bound, dtype=np.float64)) for c in response.curves)
            methods.extend(_METHOD_NAMES.get(m, str(m)) for m in response.method_used)
            completed = completed and response.search_completed
        feats = np.concatenate(features) if features else np.zeros((0, int(info.feature_dim)), np.float32)
        return CurveResult(feats, curves, methods, completed)
