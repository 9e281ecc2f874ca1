"""Bad input: property-based fuzzing (hypothesis) of every RPC of both services on 127.0.0.1.

Malformed tensors (shapes, dtypes, byte lengths, NaN/Inf, out-of-range pixels), radii, enums, tolerances,
ladders, KServe inputs, raw undecodable protobuf bytes and odd authorization metadata. A case fails when the
server answers INTERNAL, UNKNOWN or DATA_LOSS (a caller's mistake must get a specific code); afterwards the
servers must still report SERVING and answer a valid request correctly.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reaas.kserve.v2 import inference_pb2
from reaas.v1 import common_pb2, encoder_pb2, perturb_pb2

INTERNAL_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
IMAGE_SHAPE = (1, 28, 28)

ENCODER_METHODS = {
    "/reaas.v1.Encoder/Encode": (encoder_pb2.EncodeRequest, encoder_pb2.EncodeResponse),
    "/reaas.v1.Encoder/GetModelInfo": (common_pb2.GetModelInfoRequest, common_pb2.ModelInfo),
    "/inference.GRPCInferenceService/ModelInfer": (
        inference_pb2.ModelInferRequest,
        inference_pb2.ModelInferResponse,
    ),
    "/inference.GRPCInferenceService/ModelMetadata": (
        inference_pb2.ModelMetadataRequest,
        inference_pb2.ModelMetadataResponse,
    ),
    "/inference.GRPCInferenceService/ModelReady": (
        inference_pb2.ModelReadyRequest,
        inference_pb2.ModelReadyResponse,
    ),
    "/inference.GRPCInferenceService/ServerLive": (
        inference_pb2.ServerLiveRequest,
        inference_pb2.ServerLiveResponse,
    ),
    "/inference.GRPCInferenceService/ServerReady": (
        inference_pb2.ServerReadyRequest,
        inference_pb2.ServerReadyResponse,
    ),
}
PERTURB_METHODS = {
    "/reaas.v1.Perturb/F2IPerturb": (perturb_pb2.F2IPerturbRequest, perturb_pb2.F2IPerturbResponse),
    "/reaas.v1.Perturb/F2IPerturbCurve": (
        perturb_pb2.F2IPerturbCurveRequest,
        perturb_pb2.F2IPerturbCurveResponse,
    ),
    "/reaas.v1.Perturb/F2ISemantic": (perturb_pb2.F2ISemanticRequest, perturb_pb2.F2ISemanticResponse),
    "/reaas.v1.Perturb/GetModelInfo": (common_pb2.GetModelInfoRequest, common_pb2.ModelInfo),
}
FAMILIES = 9  # the RPC families run_against explores, each with cases_per_family cases


@dataclass(frozen=True)
class FuzzSettings:
    """Cases per RPC family (FAMILIES of them), the per-call deadline and the hypothesis seed."""

    cases_per_family: int = 1250
    timeout_s: float = 3.0
    seed: int = 0


# ---- strategies (pure) ----
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 1.0, -0.0, 1e-45, 1.0000001, -1e-9, 1e308, math.nan, math.inf]),
)
_int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 70))
_int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1100))
_dtype = st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(-(2**31), 2**31 - 1))
_text = st.one_of(st.text(max_size=70), st.just(""), st.sampled_from(["0" * 64, "f" * 64]))
_pin = st.one_of(st.just(""), _text)  # mostly unpinned, so cases get past the pin check


@st.composite
def valid_images(draw) -> common_pb2.Tensor:
    """A well-formed image batch: [B, 1, 28, 28], B in 1..3, float32/float64/uint8, values in range."""
    batch = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([common_pb2.FLOAT32, common_pb2.FLOAT64, common_pb2.UINT8]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (batch, *IMAGE_SHAPE)
    if dtype == common_pb2.UINT8:
        data = rng.integers(0, 256, size=shape, dtype=np.uint8).tobytes()
    else:
        array = rng.random(shape)
        array[..., 0, 0] = draw(st.sampled_from([0.0, 1.0, 0.5]))
        data = array.astype("<f4" if dtype == common_pb2.FLOAT32 else "<f8").tobytes()
    return common_pb2.Tensor(shape=list(shape), dtype=dtype, data=data)


@st.composite
def broken_images(draw) -> common_pb2.Tensor:
    """A tensor that is malformed or violates the image contract in one or more ways."""
    kind = draw(st.sampled_from(["shape", "length", "values", "dtype", "random"]))
    tensor = draw(valid_images())
    if kind == "shape":
        shape = draw(st.lists(_int64, max_size=10))
        return common_pb2.Tensor(shape=shape, dtype=tensor.dtype, data=tensor.data)
    if kind == "length":
        cut = draw(st.integers(-64, 64))
        data = tensor.data[:cut] if cut < 0 else tensor.data + bytes(cut)
        return common_pb2.Tensor(shape=tensor.shape, dtype=tensor.dtype, data=data)
    if kind == "values" and tensor.dtype != common_pb2.UINT8:
        width = 4 if tensor.dtype == common_pb2.FLOAT32 else 8
        array = np.frombuffer(tensor.data, dtype=f"<f{width}").copy()
        with np.errstate(over="ignore"):  # 1e308 into float32 is meant to become inf
            array[draw(st.integers(0, array.size - 1))] = draw(_floats)
        return common_pb2.Tensor(shape=tensor.shape, dtype=tensor.dtype, data=array.tobytes())
    if kind == "dtype":
        return common_pb2.Tensor(shape=tensor.shape, dtype=draw(_dtype), data=tensor.data)
    return common_pb2.Tensor(
        shape=draw(st.lists(_int64, max_size=6)), dtype=draw(_dtype), data=draw(st.binary(max_size=256))
    )


_images = st.one_of(valid_images(), broken_images(), st.just(common_pb2.Tensor()))


@st.composite
def encode_requests(draw) -> tuple[str, object]:
    """Encode with fuzzed images and pin."""
    return "/reaas.v1.Encoder/Encode", encoder_pb2.EncodeRequest(
        images=draw(_images), model_sha256=draw(_pin)
    )


def _images_and_radii(draw) -> tuple[common_pb2.Tensor, list[float]]:
    """Fuzzed images and feature radii: mostly one finite radius per image, sometimes not."""
    images = draw(_images)
    batch = int(images.shape[0]) if len(images.shape) and 0 < images.shape[0] < 8 else 1
    radii = draw(
        st.one_of(
            st.lists(_floats, min_size=batch, max_size=batch),
            st.lists(_floats, max_size=5),
            st.lists(st.floats(0.0, 10.0), min_size=batch, max_size=batch),
        )
    )
    return images, radii


@st.composite
def perturb_requests(draw) -> tuple[str, object]:
    """F2IPerturb with fuzzed images, radii, norm, method, tolerance, pin and clip."""
    images, radii = _images_and_radii(draw)
    request = perturb_pb2.F2IPerturbRequest(
        images=images,
        feature_radius=radii,
        norm=draw(st.one_of(st.sampled_from([0, 1]), _int32)),
        method=draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2, 3]), _int32)),
        relative_tolerance=draw(st.one_of(st.just(0.0), st.just(0.01), _floats)),
        model_sha256=draw(_pin),
        clip_to_pixel_box=draw(st.booleans()),
    )
    return "/reaas.v1.Perturb/F2IPerturb", request


@st.composite
def semantic_requests(draw) -> tuple[str, object]:
    """F2ISemantic with fuzzed images, radii, perturbation kind, method, tolerance, pin and box ratio."""
    images, radii = _images_and_radii(draw)
    request = perturb_pb2.F2ISemanticRequest(
        images=images,
        feature_radius=radii,
        perturbation=draw(st.one_of(st.sampled_from([0, 1, 2]), _int32)),
        method=draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2, 3, 4]), _int32)),
        relative_tolerance=draw(st.one_of(st.just(0.0), st.just(0.05), _floats)),
        model_sha256=draw(_pin),
        contrast_per_brightness=draw(st.one_of(st.just(0.0), st.just(1.0), _floats)),
    )
    return "/reaas.v1.Perturb/F2ISemantic", request


@st.composite
def curve_requests(draw) -> tuple[str, object]:
    """F2IPerturbCurve with fuzzed images, ladder, norm, method."""
    request = perturb_pb2.F2IPerturbCurveRequest(
        images=draw(_images),
        norm=draw(st.one_of(st.sampled_from([0, 1]), _int32)),
        method=draw(st.one_of(st.sampled_from([0, 1, 1, 1, 2]), _int32)),
        model_sha256=draw(_pin),
        clip_to_pixel_box=draw(st.booleans()),
        num_radii=draw(st.one_of(st.sampled_from([0, 2, 3, 16]), _int32)),
        min_radius=draw(st.one_of(st.just(0.0), _floats)),
        max_radius=draw(st.one_of(st.just(0.0), _floats)),
    )
    return "/reaas.v1.Perturb/F2IPerturbCurve", request


@st.composite
def kserve_requests(draw) -> tuple[str, object]:
    """KServe ModelInfer / ModelMetadata / ModelReady with fuzzed names, datatypes, shapes and contents."""
    name = draw(st.one_of(st.just("model"), _text))
    version = draw(st.sampled_from(["", "1", "2", "x"]))
    kind = draw(st.sampled_from(["infer", "infer", "infer", "metadata", "ready", "live"]))
    if kind == "metadata":
        return (
            "/inference.GRPCInferenceService/ModelMetadata",
            inference_pb2.ModelMetadataRequest(name=name, version=version),
        )
    if kind == "ready":
        return (
            "/inference.GRPCInferenceService/ModelReady",
            inference_pb2.ModelReadyRequest(name=name, version=version),
        )
    if kind == "live":
        return "/inference.GRPCInferenceService/ServerLive", inference_pb2.ServerLiveRequest()
    tensor_type = inference_pb2.ModelInferRequest.InferInputTensor
    inputs, raw = [], []
    for _ in range(draw(st.integers(0, 2))):
        image = draw(_images)
        datatype = draw(st.one_of(st.sampled_from(["FP32", "FP64", "UINT8", "BYTES", "INT64"]), _text))
        tensor = tensor_type(
            name=draw(st.sampled_from(["images", "input", ""])), datatype=datatype, shape=list(image.shape)
        )
        if draw(st.booleans()):
            raw.append(image.data)
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=40)))
            tensor.contents.fp64_contents.extend(draw(st.lists(_floats, max_size=8)))
            tensor.contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=8)))
        inputs.append(tensor)
    request = inference_pb2.ModelInferRequest(
        model_name=name,
        model_version=version,
        inputs=inputs,
        raw_input_contents=raw,
        id=draw(st.text(max_size=8)),
    )
    for out in draw(st.lists(st.sampled_from(["features", "logits", ""]), max_size=2)):
        request.outputs.add(name=out)
    return "/inference.GRPCInferenceService/ModelInfer", request


def raw_requests(methods: list[str]) -> st.SearchStrategy:
    """(method path, raw bytes): undecodable or truncated protobuf encodings sent as the request."""
    garbage = st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\x12\x05ab", b"\x80" * 20]),
    )
    return st.tuples(st.sampled_from(methods), garbage)


def metadata_cases(methods: list[str]) -> st.SearchStrategy:
    """(method path, metadata): missing, malformed, wrong or duplicated authorization headers."""
    values = st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        st.sampled_from(["Bearer", "Bearer ", "bearer x", "Basic abc", "Bearer  "]),
    )
    entry = st.tuples(
        st.sampled_from(["authorization", "x-api-key", "x-forwarded-for", "grpc-timeout-x"]), values
    )
    return st.tuples(st.sampled_from(methods), st.lists(entry, max_size=3))


# ---- running ----
class Recorder:
    """Counts every case's status code and keeps examples of internal errors."""

    def __init__(self):
        self.codes: collections.Counter[str] = collections.Counter()
        self.internal: list[str] = []
        self.client_rejected = 0
        self.cases = 0

    def call(self, channel: grpc.Channel, method: str, payload: bytes, metadata, timeout_s: float) -> None:
        """Send raw request bytes to ``method`` and record the status code."""
        self.cases += 1
        rpc = channel.unary_unary(method)  # no serializers: bytes in, bytes out
        try:
            rpc(payload, metadata=metadata, timeout=timeout_s)
            self.codes["OK"] += 1
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INTERNAL and error.details() == "Invalid metadata":
                self.client_rejected += 1  # refused by the client library before sending
                return
            self.codes[code.name] += 1
            if code in INTERNAL_CODES and len(self.internal) < 20:
                self.internal.append(f"{method}: {code.name}: {error.details()}")
        except ValueError:  # metadata the client library refuses to send
            self.client_rejected += 1

    @property
    def internal_errors(self) -> int:
        """Cases answered with INTERNAL, UNKNOWN or DATA_LOSS."""
        return sum(self.codes[c.name] for c in INTERNAL_CODES)


def _explore(strategy: st.SearchStrategy, check: Callable, cases: int, seed: int) -> None:
    """Run ``check`` on ``cases`` deterministic hypothesis examples (no shrinking: we count, not fail)."""

    @hypothesis.seed(seed)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def property_(case):
        check(case)

    property_()


def run_against(
    encoder_target: str, perturb_target: str, metadata, fuzz: FuzzSettings, log: Callable[[str], None] = print
) -> dict:
    """Fuzz both services at the given loopback targets with the given valid key metadata."""
    recorder = Recorder()
    families = {}
    with grpc.insecure_channel(encoder_target) as enc, grpc.insecure_channel(perturb_target) as per:

        def send(channel):
            return lambda case: recorder.call(
                channel, case[0], case[1].SerializeToString(), metadata, fuzz.timeout_s
            )

        plan = [
            ("encode", encode_requests(), send(enc)),
            ("kserve", kserve_requests(), send(enc)),
            ("f2iperturb", perturb_requests(), send(per)),
            ("f2iperturb_curve", curve_requests(), send(per)),
            ("f2isemantic", semantic_requests(), send(per)),
            (
                "encoder_raw_bytes",
                raw_requests(list(ENCODER_METHODS)),
                lambda c: recorder.call(enc, c[0], c[1], metadata, fuzz.timeout_s),
            ),
            (
                "perturb_raw_bytes",
                raw_requests(list(PERTURB_METHODS)),
                lambda c: recorder.call(per, c[0], c[1], metadata, fuzz.timeout_s),
            ),
            (
                "encoder_metadata",
                metadata_cases(list(ENCODER_METHODS)),
                lambda c: recorder.call(enc, c[0], _empty(c[0]), tuple(c[1]), fuzz.timeout_s),
            ),
            (
                "perturb_metadata",
                metadata_cases(list(PERTURB_METHODS)),
                lambda c: recorder.call(per, c[0], _empty(c[0]), tuple(c[1]), fuzz.timeout_s),
            ),
        ]
        assert len(plan) == FAMILIES
        for index, (name, strategy, check) in enumerate(plan):
            before, started = recorder.cases, time.perf_counter()
            internal_before = recorder.internal_errors
            _explore(strategy, check, fuzz.cases_per_family, fuzz.seed * 100 + index)
            families[name] = {
                "cases": recorder.cases - before,
                "internal_errors": recorder.internal_errors - internal_before,
                "seconds": round(time.perf_counter() - started, 2),
            }
            log(
                f"  fuzz {name:<18} {families[name]['cases']:>6} cases  "
                f"internal {families[name]['internal_errors']}  {families[name]['seconds']:.1f} s"
            )
    return {
        "fuzz_cases": recorder.cases,
        "fuzz_internal_errors": recorder.internal_errors,
        "codes": dict(sorted(recorder.codes.items())),
        "client_rejected_metadata": recorder.client_rejected,
        "internal_examples": recorder.internal,
        "families": families,
    }


def _empty(method: str) -> bytes:
    """A valid (all-default) request of ``method``: auth is checked before it is read."""
    request_type = {**ENCODER_METHODS, **PERTURB_METHODS}[method][0]
    return request_type().SerializeToString()


def healthy_after(encoder_target: str, perturb_target: str, metadata, model: Path) -> dict:
    """Health SERVING on both, and a valid Encode equal to ONNX Runtime's features."""
    import onnxruntime as ort

    from reaas.tensors import from_proto, to_proto
    from reaas.v1 import encoder_pb2_grpc, perturb_pb2_grpc
    from reliability.common import health_serving

    images = np.random.default_rng(7).random((2, *IMAGE_SHAPE), dtype=np.float32)
    with grpc.insecure_channel(encoder_target) as channel:
        request = encoder_pb2.EncodeRequest(images=to_proto(images))
        reply = encoder_pb2_grpc.EncoderStub(channel).Encode(request, metadata=metadata, timeout=30)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    encode_ok = bool(np.allclose(from_proto(reply.features, field="features"), expected, atol=1e-5))
    with grpc.insecure_channel(perturb_target) as channel:
        answer = perturb_pb2_grpc.PerturbStub(channel).F2IPerturb(
            perturb_pb2.F2IPerturbRequest(
                images=to_proto(images), feature_radius=[0.1, 0.2], method=common_pb2.LIPSCHITZ
            ),
            metadata=metadata,
            timeout=60,
        )
    perturb_ok = len(answer.image_radius) == 2 and all(r >= 0 for r in answer.image_radius)
    return {
        "encoder_serving": health_serving(encoder_target, "reaas.v1.Encoder"),
        "perturb_serving": health_serving(perturb_target, "reaas.v1.Perturb"),
        "encode_correct_after": encode_ok,
        "perturb_answers_after": bool(perturb_ok),
    }


def run(model: Path, work_dir: Path, fuzz: FuzzSettings, log: Callable[[str], None] = print) -> dict:
    """Start both servers in this process on loopback, fuzz every RPC, then check they are healthy."""
    from reliability.common import serving, write_keys

    keys = write_keys(work_dir / "fuzz-keys")
    with (
        serving("encoder", model, keys, model_name="model") as (_, enc),
        serving("perturb", model, keys, model_name="model") as (_, per),
    ):
        report = run_against(enc, per, keys.metadata(), fuzz, log)
        report.update(healthy_after(enc, per, keys.metadata(), model))
    report["settings"] = asdict(fuzz)
    report["model"] = str(model)
    return report
