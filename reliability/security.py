"""Security checks on 127.0.0.1: keys on every RPC, quota with a retry hint, TLS, oversize messages.

Decision (documented in the README's reliability section): grpc.health and server reflection, and the KServe
ServerLive/ServerReady probes, stay open without a key. Kubelet gRPC probes and load balancers cannot send
metadata, health reveals only SERVING/NOT_SERVING, and reflection describes the public contract that ships in
``protos/`` anyway; nothing that computes on an image or reveals the model (GetModelInfo, ModelMetadata)
is open. Everything else must answer UNAUTHENTICATED without a valid ``authorization: Bearer <key>``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from reaas.kserve.v2 import inference_pb2
from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, encoder_pb2, perturb_pb2

OPEN_WITHOUT_KEY = (
    "/grpc.health.v1.Health/Check",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


def service_methods(descriptor, service: str) -> list[str]:
    """Full method paths ``/package.Service/Method`` of one service in a proto file descriptor."""
    found = descriptor.services_by_name[service]
    return [f"/{found.full_name}/{method.name}" for method in found.methods]


def generate_self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh EC P-256 key and self-signed certificate for ``host`` and localhost; (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reaas-reliability")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _code(call: Callable) -> tuple[str, str, dict]:
    """(status name, details, trailing metadata) of one call; OK when it succeeds."""
    try:
        call()
        return "OK", "", {}
    except grpc.RpcError as error:
        trailers = {k: v for k, v in (error.trailing_metadata() or ())}
        return error.code().name, error.details() or "", trailers


def check_keys(encoder_target: str, perturb_target: str, good_metadata) -> dict:
    """Every RPC without a key / with a wrong key / with a non-Bearer scheme: UNAUTHENTICATED unless open."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    methods = (
        [(encoder_target, m) for m in service_methods(encoder_pb2.DESCRIPTOR, "Encoder")]
        + [(encoder_target, m) for m in service_methods(inference_pb2.DESCRIPTOR, "GRPCInferenceService")]
        + [(perturb_target, m) for m in service_methods(perturb_pb2.DESCRIPTOR, "Perturb")]
        + [(t, "/grpc.health.v1.Health/Check") for t in (encoder_target, perturb_target)]
    )
    bad_metadata = {
        "no key": (),
        "wrong key": (("authorization", "Bearer not-a-key"),),
        "basic scheme": (("authorization", "Basic " + good_metadata[0][1].split()[1]),),
        "empty bearer": (("authorization", "Bearer "),),
    }
    results, failures = [], []
    for target, method in methods:
        payload = health_pb2.HealthCheckRequest().SerializeToString() if "Health" in method else b""
        with grpc.insecure_channel(target) as channel:
            rpc = channel.unary_unary(method)
            for label, metadata in bad_metadata.items():
                code, _, _ = _code(
                    lambda rpc=rpc, metadata=metadata, payload=payload: rpc(
                        payload, metadata=metadata, timeout=10
                    )
                )
                expected = "OK" if method in OPEN_WITHOUT_KEY else "UNAUTHENTICATED"
                results.append({"method": method, "case": label, "code": code})
                if code != expected:
                    failures.append(f"{method} with {label}: {code}, expected {expected}")
    reflection = _reflection_lists_services(encoder_target, reflection_pb2)
    return {
        "methods_checked": len(methods),
        "cases": len(results),
        "failures": failures,
        "every_rpc_needs_a_key": not failures,
        "open_without_key": list(OPEN_WITHOUT_KEY)
        + ["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"],
        "reflection_open_lists": reflection,
    }


def _reflection_lists_services(target: str, reflection_pb2) -> list[str]:
    """Service names that reflection lists to a caller without a key."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return sorted(s.name for s in replies[0].list_services_response.service)


def check_quota(encoder_target: str, perturb_target: str, keys) -> dict:
    """The limited key spends its quota, then gets RESOURCE_EXHAUSTED with a retry-after-ms trailer."""
    from reaas.v1 import encoder_pb2_grpc, perturb_pb2_grpc

    quota = keys.limited_images_per_minute
    metadata = keys.metadata("limited")
    images = np.random.default_rng(0).random((quota, 1, 28, 28), dtype=np.float32)
    report = {"images_per_minute": quota}
    with grpc.insecure_channel(encoder_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        oversized = _code(
            lambda: stub.Encode(
                encoder_pb2.EncodeRequest(images=to_proto(np.concatenate([images, images[:1]]))),
                metadata=metadata,
                timeout=10,
            )
        )
        spend = _code(
            lambda: stub.Encode(
                encoder_pb2.EncodeRequest(images=to_proto(images)), metadata=metadata, timeout=10
            )
        )
        over = _code(
            lambda: stub.Encode(
                encoder_pb2.EncodeRequest(images=to_proto(images[:1])), metadata=metadata, timeout=10
            )
        )
    with grpc.insecure_channel(perturb_target) as channel:
        stub = perturb_pb2_grpc.PerturbStub(channel)
        perturb_spend = _code(
            lambda: stub.F2IPerturb(
                perturb_pb2.F2IPerturbRequest(
                    images=to_proto(images), feature_radius=[0.1] * quota, method=common_pb2.LIPSCHITZ
                ),
                metadata=metadata,
                timeout=60,
            )
        )
        perturb_over = _code(
            lambda: stub.F2IPerturb(
                perturb_pb2.F2IPerturbRequest(
                    images=to_proto(images[:1]), feature_radius=[0.1], method=common_pb2.LIPSCHITZ
                ),
                metadata=metadata,
                timeout=60,
            )
        )
    retry_ms = over[2].get("retry-after-ms")
    perturb_retry_ms = perturb_over[2].get("retry-after-ms")
    report.update(
        {
            "batch_over_quota": {
                "code": oversized[0],
                "details": oversized[1],
                "retry_after_ms": oversized[2].get("retry-after-ms"),
            },
            "within_quota": spend[0],
            "encoder_over_quota": {"code": over[0], "details": over[1], "retry_after_ms": retry_ms},
            "perturb_within_quota": perturb_spend[0],
            "perturb_over_quota": {"code": perturb_over[0], "retry_after_ms": perturb_retry_ms},
        }
    )
    report["ok"] = (
        spend[0] == "OK"
        and over[0] == "RESOURCE_EXHAUSTED"
        and retry_ms is not None
        and int(retry_ms) > 0
        and oversized[0] == "RESOURCE_EXHAUSTED"
        and "split" in oversized[1]
        and perturb_spend[0] == "OK"
        and perturb_over[0] == "RESOURCE_EXHAUSTED"
        and perturb_retry_ms is not None
    )
    return report


def check_tls(model: Path, work_dir: Path, keys) -> dict:
    """Encoder with a generated self-signed certificate: TLS round-trip via the SDK, plaintext refused."""
    from edge_client.sdk import ClientConfig, EncoderClient, RetryPolicy
    from reliability.common import health_serving, serving

    cert, key = generate_self_signed(work_dir / "tls")
    other_cert, _ = generate_self_signed(work_dir / "tls-other")
    images = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    no_retry = RetryPolicy(max_attempts=1)
    with serving("encoder", model, keys, tls_cert=cert, tls_key=key) as (_, target):
        config = ClientConfig(
            target,
            api_key=keys.main,
            tls=True,
            root_certificates_pem=cert.read_bytes(),
            timeout_s=30,
            retry=no_retry,
        )
        with EncoderClient(config) as client:
            features = client.encode(images)
        plain = _code(
            lambda: grpc.insecure_channel(target).unary_unary("/reaas.v1.Encoder/GetModelInfo")(
                b"", metadata=keys.metadata(), timeout=5
            )
        )
        wrong = ClientConfig(
            target,
            api_key=keys.main,
            tls=True,
            root_certificates_pem=other_cert.read_bytes(),
            timeout_s=5,
            retry=no_retry,
        )
        try:
            with EncoderClient(wrong) as client:
                client.encode(images)
            wrong_root = "OK"
        except Exception as error:  # noqa: BLE001 - report whatever the handshake failure looks like
            wrong_root = getattr(getattr(error, "code", None), "name", type(error).__name__)
        tls_health = health_serving(target, credentials=grpc.ssl_channel_credentials(cert.read_bytes()))
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    round_trip = bool(np.allclose(features, expected, atol=1e-5))
    return {
        "round_trip_correct": round_trip,
        "plaintext_client": plain[0],
        "untrusted_root_client": wrong_root,
        "health_over_tls": tls_health,
        "certificate": "self-signed EC P-256, SAN 127.0.0.1 + localhost",
        "ok": round_trip and plain[0] != "OK" and wrong_root != "OK" and tls_health,
    }


def check_oversize(model: Path, keys, max_message_mb: int = 1) -> dict:
    """A message over --max-message-mb gets RESOURCE_EXHAUSTED; a 1 GiB length prefix is refused at once."""
    from reliability.common import serving

    limit = max_message_mb * 1024 * 1024
    with serving("encoder", model, keys, max_message_mb=max_message_mb) as (server, target):
        batch = limit // (28 * 28 * 4) + 8  # just over the limit
        big = encoder_pb2.EncodeRequest(images=to_proto(np.zeros((batch, 1, 28, 28), np.float32)))
        options = [("grpc.max_send_message_length", -1)]
        with grpc.insecure_channel(target, options=options) as channel:
            code, details, _ = _code(
                lambda: channel.unary_unary("/reaas.v1.Encoder/Encode")(
                    big.SerializeToString(), metadata=keys.metadata(), timeout=30
                )
            )
            small = encoder_pb2.EncodeRequest(images=to_proto(np.zeros((1, 1, 28, 28), np.float32)))
            reply = channel.unary_unary("/reaas.v1.Encoder/Encode")(
                small.SerializeToString(), metadata=keys.metadata(), timeout=30
            )
            features = from_proto(encoder_pb2.EncodeResponse.FromString(reply).features, field="features")
        prefix = _claimed_length_probe(target, keys.metadata()[0][1], 1 << 30)
    return {
        "max_message_mb": max_message_mb,
        "request_bytes": big.ByteSize(),
        "code": code,
        "details": details,
        "served_after": features.shape[0] == 1,
        "huge_length_prefix": prefix,
        **outcome(
            {"over_limit_message": code == "RESOURCE_EXHAUSTED", "huge_length_prefix": _probe_passed(prefix)}
        ),
    }


def _probe_passed(probe: dict) -> bool | None:
    """True when the length-prefix probe was refused, False when not, None when it did not run (skipped)."""
    return None if probe.get("code") == "skipped" else probe.get("code") == "RESOURCE_EXHAUSTED"


def outcome(checks: dict[str, bool | None]) -> dict:
    """``ok``, ``status`` and ``skipped`` of named checks, each True (passed), False or None (skipped).

    A skipped check is not a pass: ``ok`` is True only when every check ran and passed; ``status`` is
    "failed" when any check failed, else "skipped" when any was skipped, else "passed".
    """
    failed = sorted(name for name, passed in checks.items() if passed is False)
    skipped = sorted(name for name, passed in checks.items() if passed is None)
    status = "failed" if failed else "skipped" if skipped else "passed"
    return {"ok": status == "passed", "status": status, "failed": failed, "skipped": skipped}


def _claimed_length_probe(target: str, authorization: str, claimed: int, timeout_s: float = 10.0) -> dict:
    """Send a gRPC frame header claiming ``claimed`` bytes plus 16 bytes of body; how does the server answer?

    An answer that arrives before the body could possibly have been sent shows the limit is enforced on the
    length prefix, before the message is buffered (allocated). Needs the ``h2`` package (HTTP/2 framing).
    """
    try:
        import h2.config
        import h2.connection
        import h2.events
    except ImportError:
        return {"code": "skipped", "why": "the h2 package is not installed"}
    host, port = target.rsplit(":", 1)
    connection = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/reaas.v1.Encoder/Encode"),
                (":authority", target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", authorization),
            ],
        )
        connection.send_data(stream, b"\x00" + claimed.to_bytes(4, "big") + bytes(16))
        sock.sendall(connection.data_to_send())
        status, sent_after = None, 16
        while status is None and time.perf_counter() - started < timeout_s:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                headers = getattr(event, "headers", None)
                if headers:
                    found = {
                        (k.decode() if isinstance(k, bytes) else k): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for k, v in headers
                    }
                    status = found.get("grpc-status", status)
                if isinstance(event, h2.events.StreamReset):
                    status = status or f"RST_STREAM {event.error_code}"
            sock.sendall(connection.data_to_send())
    seconds = time.perf_counter() - started
    names = {str(c.value[0]): c.name for c in grpc.StatusCode}
    code = names.get(str(status), str(status))
    return {
        "claimed_bytes": claimed,
        "body_bytes_sent": sent_after,
        "code": code,
        "answered_after_s": round(seconds, 4),
    }


def run(model: Path, work_dir: Path, log: Callable[[str], None] = print) -> dict:
    """All security checks against fresh in-process servers on 127.0.0.1."""
    from reliability.common import serving, write_keys

    keys = write_keys(work_dir / "security-keys", limited_images_per_minute=10)
    with serving("encoder", model, keys) as (_, enc), serving("perturb", model, keys) as (_, per):
        auth = check_keys(enc, per, keys.metadata())
        quota = check_quota(enc, per, keys)
    log(
        f"  keys: {auth['cases']} cases on {auth['methods_checked']} methods, "
        f"failures {len(auth['failures'])}"
    )
    log(f"  quota: {quota['encoder_over_quota']}")
    tls = check_tls(model, work_dir, keys)
    log(f"  tls: {tls}")
    oversize = check_oversize(model, keys)
    log(
        f"  oversize: {oversize['code']}, length-prefix probe {oversize['huge_length_prefix']} "
        f"({oversize['status']})"
    )
    summary = outcome(
        {
            "auth": auth["every_rpc_needs_a_key"],
            "quota": quota["ok"],
            "tls": tls["ok"],
            "oversize": None if oversize["status"] == "skipped" else oversize["ok"],
        }
    )
    summary["skipped"] = [f"oversize.{name}" for name in oversize["skipped"]]
    return {"auth": auth, "quota": quota, "tls": tls, "oversize": oversize, **summary}
