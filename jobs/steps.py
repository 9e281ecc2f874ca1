"""Steps the jobs share around the client workflow: the services on loopback, connecting to them, choosing
the data, plot curves. The workflow itself (train, certify, journal, count) is ``edge_client.workflow``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from deploy.local.topology import down, up
from edge_client.sdk import EncoderClient, PerturbClient
from edge_client.workflow import connect, endpoint_configs
from reaas.datasets import DataSource

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # per request and response: large Encode batches while fetching


@contextlib.contextmanager
def local_services(model: Path, run_dir: Path, encoder_replicas: int = 1) -> Iterator[dict]:
    """Start encoder and perturb services on loopback with a fresh API key; always stop them after."""
    endpoints = up(run_dir, model, encoder_replicas=encoder_replicas, intra_op_threads=1)
    try:
        yield endpoints
    finally:
        down(run_dir)


def connect_local(endpoints: dict, timeout_s: float = 120.0) -> tuple[EncoderClient, PerturbClient]:
    """Clients of the services of ``local_services`` sharing one model pin."""
    return connect(*endpoint_configs(endpoints, timeout_s=timeout_s, max_message_bytes=MAX_MESSAGE_BYTES))


def check_input_shape(encoder: EncoderClient, data: DataSource) -> None:
    """Refuse a dataset whose images the served encoder cannot take, naming both shapes."""
    expected = tuple(int(v) for v in encoder.model_info().input_shape)
    images, _ = data.load("test")
    if expected and tuple(images.shape[1:]) != expected:
        raise ValueError(f"the served encoder takes images {list(expected)} but {data.name} images are "
                         f"{list(images.shape[1:])}: serve an encoder pre-trained for this dataset "
                         f"(python -m services.trainer --dataset {data.name} ...)")


def training_images(data: DataSource, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_train`` training images [N, C, H, W] and labels [N] (the feature cache keys on it)."""
    images, labels = data.load("train")
    return images[:num_train], labels[:num_train]


def rows_to_curve(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(correct [N], radius [N]) of journal rows, for plots; abstentions are wrong."""
    correct = np.array([r["prediction"] == r["label"] for r in rows], dtype=bool)
    radius = np.array([r["radius"] for r in rows], dtype=np.float64)
    return correct, radius


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory (for service run dirs that must not collide)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
