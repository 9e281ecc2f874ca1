"""The client workflow, once: connect, train the downstream model, certify inputs and semantic ranges.

``python -m edge_client``, the jobs (``make run``, ``make bench``) and the fault suite only parse their
arguments and call these functions, so each of them fetches, caches, trains, journals, times and counts
queries the same way:

- :func:`connect` — Encoder and Perturb clients sharing one model pin.
- :func:`train_downstream` — fetch training features (cached, with what fetching cost) and train the MLP:
  REaaS, or the SEaaS-SC / SEaaS-DS baselines (:func:`train_denoiser_onnx` trains the DS denoiser).
- :func:`certify_subset` — certify test inputs with any method, journaled (a killed run resumes).
- :func:`certify_images` — certify new images: a label (or an abstention) and a certified radius each.
- :func:`certify_semantic` — certified brightness / contrast ranges of certified rows.

A downstream model is named by ``MLP.sha256`` everywhere (journal headers, training reports).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_client.certification import (
    CertifyConfig,
    certify_one,
    journal_header,
    load_denoiser,
    run_certification,
)
from edge_client.feature_cache import CacheKey, FeatureCache
from edge_client.journal import Journal
from edge_client.metrics import summarize
from edge_client.mlp import MLP
from edge_client.sdk import ClientConfig, EncoderClient, ModelMismatchError, ModelPin, PerturbClient
from edge_client.seaas_baselines import fetch_noisy_training_features, noisy_variant
from edge_client.semantic import KINDS as SEMANTIC_KINDS
from edge_client.semantic import LEVELS as SEMANTIC_LEVELS
from edge_client.semantic import run_semantic, summarize_semantic
from edge_client.smoothing import ABSTAIN, SmoothingConfig, input_rng, predict_features
from edge_client.training import TrainConfig, noise_sigma, select_noise_scale, train_mlp
from reaas.datasets import DataSource, evaluation_subset_indices

BASELINES = ("reaas", "seaas-sc", "seaas-ds")
EVALUATION_STRIDE = 20  # the evaluation subset: test indices ≡ 0 (mod 20)


def connect(encoder: ClientConfig, perturb: ClientConfig | None = None
            ) -> tuple[EncoderClient, PerturbClient]:
    """Clients of the Encoder and Perturb services sharing one model pin (features and radii can never come
    from different encoders); ``perturb`` defaults to the encoder's configuration (one server for both)."""
    pin = ModelPin()
    return EncoderClient(encoder, pin=pin), PerturbClient(perturb or encoder, pin=pin)


def endpoint_configs(endpoints: Mapping[str, Any], **options) -> tuple[ClientConfig, ClientConfig]:
    """ClientConfigs (encoder, perturb) of the services in an ``endpoints.json`` of ``make up``
    (``deploy/local``), pinned to its model; ``options`` (timeout_s, retry, ...) apply to both."""
    api_key = endpoints.get("api_key")
    if api_key is None and endpoints.get("api_key_file"):
        api_key = _first_key(Path(endpoints["api_key_file"]))

    def config(service: str) -> ClientConfig:
        return ClientConfig(endpoints["services"][service]["target"], api_key=api_key,
                            expected_model_sha256=endpoints.get("model_sha256"), **options)

    return config("encoder"), config("perturb")


def _first_key(path: Path) -> str:
    """The key of the first entry of an API-key file (``name key [images_per_minute]`` lines)."""
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2:
            return fields[1]
    raise ValueError(f"no API key in {path}")


@dataclass(frozen=True)
class DownstreamConfig:
    """How the client trains its downstream MLP on fetched features.

    ``baseline``: "reaas" (1 query per training image; feature noise c chosen on a validation split),
    "seaas-sc" (``copies`` noisy images per training image, one query each; no feature noise) or "seaas-ds"
    (clean features, no feature noise; certified with the denoiser of :func:`train_denoiser_onnx`).
    """

    baseline: str = "reaas"
    noise_c_grid: tuple[float, ...] = (0.5, 1.0, 2.0)  # sigma_F = c * S / sqrt(d); one value: no selection
    selection_images: int = 12_000  # training features used to choose c (validation carved from them)
    validation_fraction: float = 0.1
    image_sigma: float = 0.25  # SEaaS-SC: image-space noise std of the copies, pixel units
    copies: int = 25  # SEaaS-SC: noisy copies per training image
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if not self.noise_c_grid:
            raise ValueError("noise_c_grid needs at least one value")


@dataclass(frozen=True)
class Downstream:
    """A trained downstream classifier, the encoder whose features it learned, and what they cost."""

    mlp: MLP
    noise_c: float | None  # SC noise: sigma_F = c * S / sqrt(d); 0 for SEaaS; None: unknown (no report)
    training_inputs: int = 0  # training images (a SEaaS-SC image counts once, whatever its copies)
    training_queries: int = 0  # what fetching the training features cost, also when read from the cache
    training_bytes: int = 0
    encoder_sha256: str = ""  # "" = unknown
    baseline: str = "reaas"
    features_sha256: str = ""  # of the training features [N, D]: equal when two runs fetched the same
    features_cached: bool = False  # this run read them from the cache (0 new queries)
    selection_table: list[dict] = field(default_factory=list)  # the noise-c candidates and their scores
    denoiser: str = ""  # SEaaS-DS: the client's ONNX denoiser

    @property
    def sigma_f(self) -> float:
        """Feature-space smoothing noise sigma_F, raw feature units (NaN when the noise is unknown)."""
        if self.noise_c is None:
            return float("nan")
        return noise_sigma(self.mlp.spread, self.mlp.feature_dim, self.noise_c)

    def summarize(self, rows: Sequence[dict]) -> dict:
        """Certification summary of journal rows, with this model's training cost per training input."""
        return summarize(rows, training_inputs=self.training_inputs, training_queries=self.training_queries,
                         training_bytes=self.training_bytes)

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """The MLP to ``path`` (.npz) and the rest, with ``extra``, to ``<path>.json``; the report's path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.mlp.save(path)
        report = {"noise_c": self.noise_c, "num_train": self.training_inputs,
                  "training_queries": self.training_queries, "training_bytes": self.training_bytes,
                  "model_sha256": self.encoder_sha256, "baseline": self.baseline,
                  "features_sha256": self.features_sha256, "features_cached": self.features_cached,
                  "noise_c_table": self.selection_table, "denoiser": self.denoiser,
                  "mlp_sha256": self.mlp.sha256, "sigma_F": self.sigma_f, "feature_spread": self.mlp.spread,
                  "feature_dim": self.mlp.feature_dim, **extra}
        report_path = _report_path(path)
        report_path.write_text(json.dumps(report, indent=2))
        return report_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Downstream:
        """A model written by :meth:`save`; an MLP without its report loads with unknown noise and cost."""
        path = Path(path)
        report_path = _report_path(path)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        return cls(MLP.load(path), report.get("noise_c"), int(report.get("num_train", 0)),
                   int(report.get("training_queries", 0)), int(report.get("training_bytes", 0)),
                   report.get("model_sha256") or "", report.get("baseline") or "reaas",
                   report.get("features_sha256") or "", bool(report.get("features_cached", False)),
                   list(report.get("noise_c_table") or []), report.get("denoiser") or "")


def _report_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def train_downstream(encoder: EncoderClient, images: np.ndarray, labels: np.ndarray,
                     config: DownstreamConfig | None = None, *,
                     cache_dir: str | os.PathLike | None = None, dataset: str = "",
                     num_classes: int | None = None, fetch_batch: int = 4096,
                     on_fetch: Callable[[int], None] | None = None,
                     progress: Callable[[int, float], None] | None = None,
                     checkpoint: str | os.PathLike | None = None) -> Downstream:
    """Fetch the features of training images [N, C, H, W] (labels [N]) and train the downstream MLP on them.

    With ``cache_dir`` the features are kept under (``dataset``, train rows 0..N-1, encoder, variant), so
    ``images`` must be the first N training images of ``dataset``; a re-run then costs no queries and still
    reports what fetching cost. REaaS chooses c on a seeded subset of ``selection_images`` training features
    at half the epochs (at least 5). ``on_fetch(n)`` runs after each Encode call of at most ``fetch_batch``
    clean images, with the images fetched so far; ``progress(epoch, loss)`` after each training epoch.
    ``checkpoint``: the final MLP's per-epoch checkpoint (``train_mlp``), so a killed run resumes it.
    """
    config = config or DownstreamConfig()
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or len(images) != len(labels) or not len(images):
        raise ValueError(f"need training images [N, C, H, W] and labels [N], N >= 1; got images "
                         f"{list(images.shape)} and labels {list(labels.shape)}")
    sha = encoder.model_info().model_sha256
    features, (queries, num_bytes), cached = _training_features(encoder, images, config, cache_dir, dataset,
                                                                fetch_batch, on_fetch)
    if config.baseline == "seaas-sc":
        labels = np.repeat(labels, config.copies)
    table: list[dict] = []
    if config.baseline != "reaas":
        noise_c = 0.0
    elif len(config.noise_c_grid) > 1:
        subset = np.random.default_rng(config.train.seed).permutation(len(labels))[:config.selection_images]
        selection = replace(config.train, epochs=max(5, config.train.epochs // 2))
        noise_c, table = select_noise_scale(features[subset], labels[subset], config.noise_c_grid, selection,
                                            config.validation_fraction)
    else:
        noise_c = float(config.noise_c_grid[0])
    mlp = train_mlp(features, labels, replace(config.train, noise_c=noise_c),
                    num_classes=num_classes or int(labels.max()) + 1, progress=progress,
                    checkpoint=checkpoint)
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()
    return Downstream(mlp, noise_c, len(images), queries, num_bytes, sha, config.baseline, digest, cached,
                      table)


def _training_features(encoder: EncoderClient, images: np.ndarray, config: DownstreamConfig,
                       cache_dir: str | os.PathLike | None, dataset: str, fetch_batch: int,
                       on_fetch: Callable[[int], None] | None
                       ) -> tuple[np.ndarray, tuple[int, int], bool]:
    """(features [N or N * copies, D], (queries, bytes) fetching them cost, read from the cache)."""
    rows = np.arange(len(images))
    if config.baseline == "seaas-sc":
        seed = config.train.seed
        variant = noisy_variant(config.image_sigma, config.copies, seed)
        rows = np.repeat(rows, config.copies)

        def fetch() -> np.ndarray:
            return fetch_noisy_training_features(encoder, images, config.image_sigma, config.copies, seed)
    else:
        variant = "clean"

        def fetch() -> np.ndarray:
            parts = []
            for start in range(0, len(images), fetch_batch):
                parts.append(encoder.encode(images[start:start + fetch_batch]))
                if on_fetch is not None:
                    on_fetch(start + len(parts[-1]))
            return np.concatenate(parts)

    usage = encoder.usage

    def measure() -> tuple[int, int]:
        return usage.queries, usage.bytes

    if cache_dir is None:
        before = measure()
        features = fetch()
        after = measure()
        return features, (after[0] - before[0], after[1] - before[1]), False
    if not dataset:
        raise ValueError("a feature cache keys entries by dataset name: pass dataset=... with cache_dir")
    key = CacheKey(dataset, "train", tuple(int(i) for i in rows), encoder.pin.sha256 or "", variant)
    return FeatureCache(cache_dir).get_or_fetch(key, fetch, measure)


def train_denoiser_onnx(images: np.ndarray, config, path: str | os.PathLike,
                        progress: Callable[[str, int, float], None] | None = None) -> Path:
    """SEaaS-DS: train a DnCNN (``seaas_baselines.DenoiserConfig``) on the client's own images [N, C, H, W]
    (no queries) and export it to ONNX at ``path``; needs torch (the ``train`` extra)."""
    from edge_client.seaas_baselines import export_denoiser_onnx, train_denoiser

    model = train_denoiser(images, config, progress=progress)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        export_denoiser_onnx(model, path, tuple(images.shape[1:]))
    return path


class Subset(NamedTuple):
    """Labelled test inputs: dataset indices [N], images [N, C, H, W] float32 in [0, 1], labels [N]."""

    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray


def evaluation_subset(data: DataSource, num_test: int) -> Subset:
    """The first ``num_test`` inputs of the fixed evaluation subset: test indices ≡ 0 (mod 20), i.e. 0, 20,
    40, … (Fashion-MNIST's 10,000 test images give 500)."""
    images, labels = data.load("test")
    indices = evaluation_subset_indices(num_test, stride=EVALUATION_STRIDE, total=len(labels))
    return Subset(indices, images[indices], labels[indices])


@dataclass(frozen=True)
class CertifiedSubset:
    """Journal rows of certified inputs (sorted by index), their summary and the journal file."""

    rows: list[dict]
    summary: dict
    journal: Path


@dataclass(frozen=True)
class Certificate:
    """One image's certificate: the predicted class, or None where the smoothed classifier abstained, and
    the certified radius (image units of ``CertifyConfig.image_norm``; 0 when abstaining)."""

    label: int | None
    radius: float
    feature_radius: float | None  # R_F, raw feature units (None for the SEaaS methods)
    queries: int
    bytes: int


def _resolved(config: CertifyConfig, downstream: Downstream) -> CertifyConfig:
    """The configuration with the model's own SC noise and denoiser filled in."""
    if downstream.noise_c is None and config.method in ("sc", "sc-curve"):
        raise ValueError("SC needs the noise level c the model was trained with, and this model has no "
                         "training report: give it (--noise-c)")
    noise_c = config.noise_c if downstream.noise_c is None else downstream.noise_c
    return replace(config, noise_c=noise_c, denoiser_path=config.denoiser_path or downstream.denoiser)


def _served_sha256(downstream: Downstream, encoder: EncoderClient, perturb: PerturbClient | None,
                   method: str) -> str:
    """The served encoder's sha256 (pinned on both clients); refuses one the model was not trained on."""
    sha = encoder.model_info().model_sha256
    if perturb is not None and not method.startswith("seaas"):
        perturb.model_info()
    if downstream.encoder_sha256 and downstream.encoder_sha256 != sha:
        raise ModelMismatchError(f"the model was trained on features of encoder "
                                 f"{downstream.encoder_sha256[:12]}…, but the service now serves {sha[:12]}…")
    return sha


def certify_subset(downstream: Downstream, subset: Subset, encoder: EncoderClient,
                   perturb: PerturbClient | None, config: CertifyConfig, journal: str | os.PathLike, *,
                   dataset: str = "fashion-mnist", denoiser=None,
                   on_row: Callable[[dict], None] | None = None) -> CertifiedSubset:
    """Certify every subset input not yet journaled with ``config.method`` (SC noise: the model's own).

    ``journal``: a ``.jsonl`` file, or a directory holding ``<method>-<hash of the header>.jsonl`` (another
    configuration then gets a file of its own). The header names the configuration, the served encoder,
    the model (``MLP.sha256``) and ``dataset``; a resumed run repeats no query.
    """
    config = _resolved(config, downstream)
    header = journal_header(config, _served_sha256(downstream, encoder, perturb, config.method),
                            downstream.mlp, dataset)
    path = Path(journal)
    opened = Journal(path, header) if path.suffix == ".jsonl" else Journal.keyed(path, config.method, header)
    rows = run_certification(opened, subset.indices, subset.images, subset.labels, downstream.mlp, encoder,
                             perturb, config, on_row=on_row, denoiser=denoiser)
    return CertifiedSubset(rows, downstream.summarize(rows), opened.path)


def certify_images(downstream: Downstream, images: np.ndarray, encoder: EncoderClient,
                   perturb: PerturbClient | None, config: CertifyConfig | None = None, *,
                   denoiser=None) -> list[Certificate]:
    """Certify new images [N, C, H, W] (float32 in [0, 1]) one by one, not journaled; image k's noise is
    seeded by (config.seed, k). REaaS costs 2 queries an image (1 for sc-curve); default: REaaS-SC."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {list(images.shape)}")
    config = _resolved(config or CertifyConfig(), downstream)
    _served_sha256(downstream, encoder, perturb, config.method)
    denoiser = load_denoiser(config, denoiser)
    out = []
    for k, image in enumerate(images):
        row = certify_one(k, image, -1, downstream.mlp, encoder, perturb, config, denoiser)
        abstained = row["prediction"] == ABSTAIN
        out.append(Certificate(None if abstained else int(row["prediction"]),
                               0.0 if abstained else float(row["radius"]), row["feature_radius"],
                               int(row["queries"]), int(row["bytes"])))
    return out


def predict_images(downstream: Downstream, images: np.ndarray, encoder: EncoderClient, *,
                   smoothed_n: int = 0, alpha: float = 0.001, seed: int = 0,
                   indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted classes [N] of images [N, C, H, W] (1 query each) and, with ``smoothed_n`` > 0, those of the
    smoothed classifier (PREDICT with that many feature-space samples, -1 = abstain; image k seeded by
    (seed, indices[k]))."""
    features = encoder.encode(images)
    predictions = downstream.mlp.predict(features)
    if smoothed_n <= 0:
        return predictions, None
    if downstream.noise_c is None:
        raise ValueError("smoothed predictions need the model's noise level c: give it (--noise-c)")
    smoothing = SmoothingConfig(sigma=downstream.sigma_f, n=smoothed_n, alpha=alpha)
    indices = range(len(features)) if indices is None else indices
    smoothed = [predict_features(downstream.mlp, features[k], smoothing, input_rng(seed, int(index)))
                for k, index in enumerate(indices)]
    return predictions, np.asarray(smoothed, dtype=np.int64)


def certify_semantic(rows: Sequence[dict], images: Mapping[int, np.ndarray], perturb: PerturbClient,
                     kind: str, journal_dir: str | os.PathLike, *, l2_unclipped: bool,
                     on_row: Callable[[dict], None] | None = None) -> CertifiedSubset:
    """Certified ``kind`` ranges (brightness / contrast) of certified ℓ2 rows, 1 F2ISemantic query each.

    ``images`` maps a row's index to its image [C, H, W]; ``l2_unclipped``: the rows' ℓ2 radii were
    certified without the pixel box (their implied range is then a sound floor). Journaled in
    ``journal_dir`` under a name keyed by the kind, the encoder and the rows' feature radii.
    """
    if kind not in SEMANTIC_KINDS:
        raise ValueError(f"kind must be one of {SEMANTIC_KINDS}, got {kind!r}")
    header = {"kind": kind, "model_sha256": perturb.pin.sha256 or "",
              "feature_radii": [[r["index"], r["feature_radius"]] for r in rows]}
    journal = Journal.keyed(journal_dir, f"semantic-{kind}", header)
    semantic_rows = run_semantic(journal, rows, images, perturb, kind, l2_unclipped=l2_unclipped,
                                 on_row=on_row)
    return CertifiedSubset(semantic_rows, summarize_semantic(semantic_rows, SEMANTIC_LEVELS[kind]),
                           journal.path)

