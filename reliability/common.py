"""What every reliability check shares: model paths, a stand-in encoder, API keys, servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

SHIPPED_MODELS = (Path("models/fmnist-robust.onnx"), Path("models/fmnist-standard.onnx"))
LOOPBACK = "127.0.0.1"


def shipped_models() -> list[Path]:
    """The shipped encoders that exist on disk (robust first)."""
    return [path for path in SHIPPED_MODELS if path.is_file()]


def export_stand_in_encoder(path: Path, seed: int = 0, width: int = 8, feature_dim: int = 32) -> Path:
    """A small untrained ConvEncoder [B, 1, 28, 28] -> [B, feature_dim] (two stride-2 convs of ``width``
    and 2·``width`` channels) as ONNX, with a model card."""
    from reaas.onnx_export import torch_to_onnx
    from services.common.model_file import sha256_of
    from services.trainer.encoders import EncoderConfig, untrained_encoder

    config = EncoderConfig(
        channels=(width, 2 * width), strides=(2, 2), hidden_dim=64, feature_dim=feature_dim
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(torch_to_onnx(untrained_encoder(config, seed), (1, 28, 28)))
    card = {"model_sha256": sha256_of(path), "note": f"reliability stand-in encoder, seed {seed}, untrained"}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class Keys:
    """An API-key file with an unlimited key ``main`` and a quota-limited key ``limited``."""

    path: Path
    main: str
    limited: str
    limited_images_per_minute: int

    def metadata(self, which: str = "main") -> tuple[tuple[str, str]]:
        """Call metadata carrying one of the keys."""
        return (("authorization", f"Bearer {getattr(self, which)}"),)


def write_keys(directory: Path, limited_images_per_minute: int = 10) -> Keys:
    """Write a fresh random key file into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    main, limited = secrets.token_hex(16), secrets.token_hex(16)
    path = directory / "api-keys.txt"
    path.write_text(
        f"# name key [images_per_minute]\nmain {main}\nlimited {limited} {limited_images_per_minute}\n"
    )
    path.chmod(0o600)
    return Keys(path, main, limited, limited_images_per_minute)


@contextlib.contextmanager
def serving(service: str, model: Path, keys: Keys | None, **overrides) -> Iterator[tuple[object, str]]:
    """Run the encoder or perturb server in this process on 127.0.0.1:0; yields (server, 'host:port')."""
    from services.common.config import EncoderConfig, PerturbConfig

    common = {
        "model_path": Path(model),
        "port": 0,
        "bind_address": LOOPBACK,
        "intra_op_threads": 1,
        "api_key_file": keys.path if keys else None,
        "insecure_no_auth": keys is None,
        "worker_threads": 8,
    }
    common.update(overrides)
    if service == "encoder":
        from services.encoder.server import create_server

        server, port = create_server(EncoderConfig(**common))
    elif service == "perturb":
        from services.perturb.server import create_server

        server, port = create_server(PerturbConfig(**common))
    else:
        raise ValueError(f"service must be 'encoder' or 'perturb', got {service!r}")
    server.start()
    try:
        yield server, f"{LOOPBACK}:{port}"
    finally:
        server.stop(0)


def health_serving(
    target: str, service: str = "", timeout_s: float = 5.0, credentials: grpc.ChannelCredentials | None = None
) -> bool:
    """True when grpc.health reports SERVING for ``service`` on ``target``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def evaluation_images(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``count`` images of the evaluation subset: (indices [N], images [N,1,28,28] f32, labels)."""
    from reaas.datasets import evaluation_subset_indices, load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    indices = evaluation_subset_indices(count, total=len(labels))
    return indices, np.asarray(images[indices], dtype=np.float32), np.asarray(labels[indices])
