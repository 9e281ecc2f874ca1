"""The client's side of the main job and the benchmark, over real services: connect, fetch, train, certify.

Everything here goes through gRPC exactly as an edge device would; the only local shortcut is the feature
cache (re-training costs no queries). Journals make every certification step resumable.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deploy.local.topology import down, up
from edge_client.feature_cache import CacheKey, FeatureCache, fetch_features
from edge_client.journal import Journal
from edge_client.metrics import summarize
from edge_client.mlp import MLP
from edge_client.runner import CertifyConfig, certify_one, journal_header, run_certification
from edge_client.sdk import ClientConfig, EncoderClient, ModelPin, PerturbClient
from edge_client.seaas_baselines import fetch_noisy_training_features
from edge_client.training import TrainConfig, noise_sigma, select_noise_scale, train_mlp
from reaas.datasets import DataSource, evaluation_subset_indices

FASHION_MNIST = DataSource()


@dataclass(frozen=True)
class DownstreamConfig:
    """How the client trains its downstream MLP (1 query per training input)."""

    num_train: int = 60_000  # first N Fashion-MNIST training images
    noise_c_grid: tuple[float, ...] = (0.5, 1.0, 2.0)  # sigma_F = c * S / sqrt(d), chosen on validation
    selection_images: int = 12_000  # training features used to choose c (validation carved from them)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))


@dataclass
class Downstream:
    """A trained downstream classifier and what it cost."""

    mlp: MLP
    noise_c: float
    sigma_f: float
    training_inputs: int
    training_queries: int
    training_bytes: int
    selection_table: list[dict]

    @property
    def mlp_sha256(self) -> str:
        """Content hash of the MLP's parameters (journals key on it)."""
        digest = hashlib.sha256()
        for array in (*self.mlp.weights, *self.mlp.biases, self.mlp.center):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


@contextlib.contextmanager
def local_services(model: Path, run_dir: Path, encoder_replicas: int = 1) -> Iterator[dict]:
    """Start encoder and perturb services on loopback with a fresh API key; always stop them after."""
    endpoints = up(run_dir, model, encoder_replicas=encoder_replicas, intra_op_threads=1)
    try:
        yield endpoints
    finally:
        down(run_dir)


def connect(endpoints: dict, timeout_s: float = 120.0) -> tuple[EncoderClient, PerturbClient]:
    """Clients of both services sharing one model pin (features and radii can never mix encoders)."""
    pin = ModelPin(endpoints.get("model_sha256"))
    api_key = endpoints.get("api_key")
    if api_key is None and endpoints.get("api_key_file"):
        api_key = _first_key(Path(endpoints["api_key_file"]))

    def config(service: str) -> ClientConfig:
        return ClientConfig(target=endpoints["services"][service]["target"], api_key=api_key,
                            timeout_s=timeout_s, max_message_bytes=16 * 1024 * 1024)

    return EncoderClient(config("encoder"), pin=pin), PerturbClient(config("perturb"), pin=pin)


def _first_key(path: Path) -> str:
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2:
            return fields[1]
    raise ValueError(f"no API key in {path}")


def check_input_shape(encoder: EncoderClient, data: DataSource) -> None:
    """Refuse a dataset whose images the served encoder cannot take, naming both shapes."""
    expected = tuple(int(v) for v in encoder.model_info().input_shape)
    images, _ = data.load("test")
    if expected and tuple(images.shape[1:]) != expected:
        raise ValueError(f"the served encoder takes images {list(expected)} but {data.name} images are "
                         f"{list(images.shape[1:])}: serve an encoder pre-trained for this dataset "
                         f"(python -m services.trainer --dataset {data.name} ...)")


def training_features(encoder: EncoderClient, num_train: int, cache_dir: Path | None,
                      data: DataSource = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clean features [N, D] and labels [N] of the first N training images (1 query each, cached).

    Returns (features, labels, queries, bytes); over a cache hit, the queries and bytes it cost to fetch.
    """
    images, labels = data.load("train")
    indices = np.arange(min(num_train, len(labels)))
    before = encoder.usage.snapshot()
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    features, cached = fetch_features(encoder, cache, data.name, "train", indices, images[indices])
    spent = encoder.usage.since(before)
    queries, num_bytes = spent.queries, spent.bytes
    if cached:  # report what fetching them cost, not the 0 of this re-run
        key = CacheKey(data.name, "train", tuple(int(i) for i in indices), encoder.pin.sha256 or "")
        queries, num_bytes = cache.fetch_cost(key) or (len(indices), 0)
    return features, labels[indices], queries, num_bytes


def noisy_training_features(encoder: EncoderClient, num_train: int, sigma: float, copies: int, seed: int,
                            cache_dir: Path | None, data: DataSource = FASHION_MNIST
                            ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """SEaaS-SC training data: features of ``copies`` noisy copies of each of the first N training images.

    Every copy is one query. Returns (features [N*copies, D], labels [N*copies], queries, bytes), cached like
    the clean features (a cache hit reports what the fetch cost).
    """
    images, labels = data.load("train")
    indices = np.arange(min(num_train, len(labels)))
    sha = encoder.model_info().model_sha256
    variant = f"noisy-sigma{sigma:g}-k{copies}-seed{seed}"
    key = CacheKey(data.name, "train", tuple(int(i) for i in np.repeat(indices, copies)), sha, variant)
    usage = encoder.usage

    def fetch() -> np.ndarray:
        rng = np.random.default_rng([seed, 0x5EAA5])
        return fetch_noisy_training_features(encoder, images[indices], labels[indices], sigma, copies, rng)[0]

    before = usage.snapshot()
    if cache_dir is None:
        features, cached = fetch(), False
    else:
        features, cached = FeatureCache(cache_dir).get_or_fetch(key, fetch,
                                                                measure=lambda: (usage.queries, usage.bytes))
    spent = usage.since(before)
    queries, num_bytes = spent.queries, spent.bytes
    if cached:
        queries, num_bytes = FeatureCache(cache_dir).fetch_cost(key) or (len(indices) * copies, 0)
    return features, np.repeat(labels[indices], copies), queries, num_bytes


def train_downstream(encoder: EncoderClient, config: DownstreamConfig, cache_dir: Path | None,
                     progress=None, data: DataSource = FASHION_MNIST) -> Downstream:
    """Fetch training features (cached), choose c on a validation split, train the MLP on all of them."""
    features, labels, queries, num_bytes = training_features(encoder, config.num_train, cache_dir, data)
    indices = np.arange(len(labels))
    subset = np.random.default_rng(config.train.seed).permutation(len(indices))[:config.selection_images]
    if len(config.noise_c_grid) > 1:
        noise_c, table = select_noise_scale(features[subset], labels[subset], config.noise_c_grid,
                                            replace(config.train, epochs=max(5, config.train.epochs // 2)))
    else:
        noise_c, table = float(config.noise_c_grid[0]), []
    train_config = replace(config.train, noise_c=noise_c)
    mlp = train_mlp(features, labels, train_config, num_classes=int(labels.max()) + 1, progress=progress)
    return Downstream(mlp, noise_c, noise_sigma(mlp.spread, mlp.feature_dim, noise_c), len(indices),
                      queries, num_bytes, table)


def test_subset(num_test: int, data: DataSource = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, images, labels) of the fixed evaluation subset (REFERENCE §8: index ≡ 0 mod 20)."""
    images, labels = data.load("test")
    indices = evaluation_subset_indices(num_test, total=len(labels))
    return indices, images[indices], labels[indices]


def certify(method: str, downstream: Downstream, encoder: EncoderClient, perturb: PerturbClient,
            subset: tuple[np.ndarray, np.ndarray, np.ndarray], journal_dir: Path, base: CertifyConfig,
            on_row=None, denoiser=None, data: DataSource = FASHION_MNIST) -> tuple[list[dict], dict]:
    """Certify the subset with one method, journaled under ``journal_dir``; (rows, summary)."""
    config = replace(base, method=method, noise_c=downstream.noise_c)
    header = journal_header(config, encoder.pin.sha256 or "", downstream.mlp_sha256, data.name)
    journal = Journal.keyed(journal_dir, method, header)
    indices, images, labels = subset
    rows = run_certification(journal, indices, images, labels, downstream.mlp, encoder, perturb, config,
                             on_row=on_row, denoiser=denoiser)
    summary = summarize(rows, training_inputs=downstream.training_inputs,
                        training_queries=downstream.training_queries,
                        training_bytes=downstream.training_bytes)
    return rows, summary


class TimedEncoder:
    """An EncoderClient that also adds up the wall seconds spent waiting in ``encode`` (service + network)."""

    def __init__(self, client: EncoderClient):
        self._client = client
        self.seconds = 0.0

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Features [N, D] of images [N, C, H, W], timed."""
        started = time.perf_counter()
        try:
            return self._client.encode(images)
        finally:
            self.seconds += time.perf_counter() - started


def certify_image_space(method: str, downstream: Downstream, encoder: EncoderClient,
                        subset: tuple[np.ndarray, np.ndarray, np.ndarray], journal_dir: Path,
                        base: CertifyConfig, on_row=None, denoiser=None,
                        data: DataSource = FASHION_MNIST) -> tuple[list[dict], dict]:
    """SEaaS-SC / SEaaS-DS over the subset, journaled; rows split time into service and client seconds.

    Like :func:`certify`, but every row also records ``service_seconds`` (waiting on Encode) and
    ``client_seconds`` (everything else: noise, denoiser, MLP), which the runner leaves to the caller.
    """
    if not method.startswith("seaas"):
        raise ValueError(f"certify_image_space is for seaas-sc / seaas-ds, got {method!r}")
    config = replace(base, method=method)
    header = journal_header(config, encoder.pin.sha256 or "", downstream.mlp_sha256, data.name)
    journal = Journal.keyed(journal_dir, method, header)
    timed = TimedEncoder(encoder)
    indices, images, labels = subset
    done = journal.done
    for k, index in enumerate(indices):
        if int(index) in done:
            continue
        waited = timed.seconds
        row = certify_one(int(index), images[k], int(labels[k]), downstream.mlp, timed, None, config,
                          denoiser)
        row["service_seconds"] = timed.seconds - waited
        row["client_seconds"] = max(row["seconds"] - row["service_seconds"], 0.0)
        journal.append(row)
        if on_row is not None:
            on_row(row)
    wanted = {int(i) for i in indices}
    rows = [row for row in journal.rows() if int(row["index"]) in wanted]
    summary = summarize(rows, training_inputs=downstream.training_inputs,
                        training_queries=downstream.training_queries,
                        training_bytes=downstream.training_bytes)
    return rows, summary


def rows_to_curve(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(radius [N], correct [N]) of journal rows, for plots; abstentions are wrong."""
    radius = np.array([r["radius"] for r in rows], dtype=np.float64)
    correct = np.array([r["prediction"] == r["label"] for r in rows], dtype=bool)
    return radius, correct


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory (for service run dirs that must not collide)."""
    return Path(tempfile.mkdtemp(prefix=prefix))

