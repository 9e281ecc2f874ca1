"""``make bench``: SEaaS against REaaS, measured side by side over real gRPC on loopback, every row as strong
as its method allows at the budget REaaS gets.

For each encoder (robust, standard, and RoCL when its file exists and takes the dataset's images) the
services are started with a fresh API key and the edge client runs:

- SEaaS-BC: not possible without the encoder's weights (no row values).
- SEaaS-SC: image-space smoothing; its MLP trains on all training images x k noisy copies (k queries each)
  with REaaS's epochs and optimizer; the image sigma is chosen from ``image_sigmas`` on REaaS's own
  validation rows (``edge_client.training.selection_rows``) by validation ACR, the selection's queries
  counted; n0 + n queries per test input.
- SEaaS-DS: a client-trained DnCNN denoiser (MSE, trained to convergence = validation-MSE plateau, one per
  sigma, no queries) in front of the encoder, the MLP on clean features, sigma chosen like SEaaS-SC.
- REaaS-BC, REaaS-SC (2 queries per test input), REaaS-SC one-query (1).

White-box rows (no service): a smoothed CNN per image sigma (trained on noisy images to convergence), a row
with, per radius, the best of them, and a deterministic CNN that is 1-Lipschitz by construction (AOL layers,
certified by margin / (√2·L)). Clean accuracy is the base classifier on the clean image in every row.
Writes ``results/bench.md``, ``results/bench.json`` and ``results/bench.png``; journals make it resumable.

Every long training step is resumable per epoch too: the SEaaS-SC MLP, the sigma-selection MLPs, the DnCNN
denoisers and the white-box CNNs save their state after each epoch to a checkpoint in ``<out>/journals``
(named by a hash of the step's configuration; the file also holds a hash of the training data and is ignored
when it belongs to another training), and a killed bench continues from the last finished epoch with a
bit-identical result. Checkpoints are kept when a step finishes: a re-run (say, one killed during
certification) then gets the trained model back without training. Delete them to train again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_client.certification import CertifyConfig
from edge_client.feature_cache import CacheKey, FeatureCache
from edge_client.journal import Journal
from edge_client.metrics import summarize
from edge_client.seaas_baselines import (
    DenoiserConfig,
    OnnxDenoiser,
    certify_image,
    export_denoiser_onnx,
    fetch_noisy_training_features,
    image_classifier,
    noisy_variant,
    train_denoiser,
)
from edge_client.semantic import KINDS as SEMANTIC_KINDS
from edge_client.semantic import LEVELS as SEMANTIC_LEVELS
from edge_client.smoothing import SmoothingConfig, input_rng
from edge_client.training import TrainConfig, selection_rows, train_mlp
from edge_client.workflow import (
    Downstream,
    DownstreamConfig,
    Subset,
    certify_semantic,
    certify_subset,
    evaluation_subset,
    train_downstream,
)
from jobs import report, steps
from jobs.entry import interrupt_on_sigterm, run_script
from jobs.lipschitz_cnn import LipschitzConfig, certify_lipschitz, train_lipschitz_cnn
from jobs.reference_cnn import ReferenceConfig, certify_reference, train_reference
from reaas.datasets import LOADERS, DataSource
from reaas.methods import PERTURB_METHODS as PERTURB_METHOD_TABLE

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)  # certified accuracy is reported at these ℓ2 radii, next to ACR
COLUMNS = ["pipeline", "encoder", "sigma", "queries_per_train_input", "tuning_queries_per_train_input",
           "queries_per_test_input", "bytes_per_test_input", "client_seconds_per_test_input",
           "server_seconds_per_test_input", "clean_accuracy", *(report.radius_key(r) for r in RADII), "acr",
           "n_test"]
PIPELINES = ("SEaaS-BC", "SEaaS-SC", "SEaaS-DS", "REaaS-BC", "REaaS-SC", "REaaS-SC one-query")
REFERENCE = "Reference CNN (white-box SC)"
REFERENCE_BEST = "Reference CNN (white-box SC), best sigma per radius"
LIPSCHITZ = "Lipschitz CNN (white-box, AOL, deterministic)"
PLOTTED = ("SEaaS-SC", "SEaaS-DS", "REaaS-BC", "REaaS-SC")
PERTURB_METHODS = tuple(PERTURB_METHOD_TABLE)
SUBSET_HELP = "first N of the evaluation subset, test indices ≡ 0 mod 20 (0, 20, 40, …); "
CHOICES = {"bc_method": ("bc-crown", "bc-ibp"), "perturb_method": PERTURB_METHODS,
           "curve_method": PERTURB_METHODS, "dataset": tuple(LOADERS)}
TUPLES = ("noise_c", "image_sigmas")  # comma-separated numbers on the command line
# what --parts can select (comma-separated): the pipelines run over the services of every encoder, and the
# white-box rows; each part alone fits a working session, and parts run with one --out share their journals
SERVICE_PARTS = ("reaas", "seaas-sc", "seaas-ds")
PARTS = (*SERVICE_PARTS, "smoothed-cnn", "lipschitz-cnn")
ENCODERS = ("robust", "standard", "rocl")


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of the bench; ``FULL`` and ``QUICK`` are the presets, flags override single fields."""

    robust_model: Path = Path("models/fmnist-robust.onnx")
    standard_model: Path = Path("models/fmnist-standard.onnx")
    rocl_model: str = "models/fmnist-rocl.onnx"  # skipped if empty, absent, or not for the dataset's images
    dataset: str = "fashion-mnist"  # the encoders must take its images (README: your own CIFAR10/SVHN/STL10)
    data_root: str = ""  # directory of the dataset's files; empty = the default place
    num_train: int = 60_000  # training images of every downstream model (REaaS, SEaaS-SC, SEaaS-DS)
    num_test: int = 500  # REaaS rows and the Lipschitz CNN: first N of the evaluation subset
    noise_c: tuple[float, ...] = (0.5, 1.0, 2.0)  # REaaS-SC sigma_F = c * S / sqrt(d), chosen on validation
    image_sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)  # SEaaS-SC / -DS choose from these; one CNN each
    epochs: int = 20  # every MLP of the bench (REaaS's; selection runs at max(5, epochs // 2) like REaaS's)
    selection_images: int = 12_000  # REaaS's selection subset of the training images ...
    validation_fraction: float = 0.1  # ... its validation share ...
    validation_size: int = 200  # ... and the validation inputs scored (same rows for every baseline)
    selection_n: int = 2_000  # smoothing samples per validation input while choosing sigma (REaaS: 2,000)
    n0: int = 100
    n: int = 100_000  # REaaS-SC smoothing samples (feature space, no queries)
    alpha: float = 0.001
    bc_method: str = "bc-crown"  # client-side bound of the MLP for REaaS-BC
    perturb_method: str = "auto"  # F2IPerturb bound of the 2-query paths (BC, SC)
    curve_method: str = "local_lipschitz"  # F2IPerturbCurve bound of the one-query path
    perturb_timeout_s: float = 20.0  # deadline of each call; AUTO plans its search by the time left
    seaas_num_test: int = 100  # SEaaS-SC / SEaaS-DS test inputs (a prefix of the REaaS ones)
    seaas_copies: int = 25  # k noisy copies per SEaaS-SC training image (the source uses 25)
    seaas_n: int = 100_000  # SEaaS-SC samples per test input (each one Encode query)
    ds_n: int = 100_000  # SEaaS-DS samples per test input (the client runs its DnCNN on every copy)
    denoiser_max_epochs: int = 30  # trained to the validation-MSE plateau, at most this many epochs
    denoiser_depth: int = 4
    denoiser_channels: int = 32
    reference_max_epochs: int = 40  # smoothed CNNs: to the noisy validation-loss plateau
    reference_num_test: int = 100
    reference_n: int = 100_000
    lipschitz_max_epochs: int = 40  # AOL CNN: to the validation-loss plateau
    semantic_num_test: int = 20  # REaaS-BC inputs whose brightness / contrast ranges F2ISemantic certifies
    # F2ISemantic refuses (DEADLINE_EXCEEDED) rather than answer a cut-short search, and one standard-encoder
    # search took 18 s on a loaded 2-core machine: the offline bench gives each semantic call this long
    semantic_timeout_s: float = 300.0
    threads: int = 2  # torch / onnxruntime threads of the client-side training and white-box certification
    seed: int = 0
    parts: tuple[str, ...] = PARTS  # which pipelines run (PARTS); the defaults run everything
    encoders: tuple[str, ...] = ENCODERS  # which of the encoders the service parts run on
    out: Path = Path("results")
    cache_dir: Path = Path(".cache/features")


FULL = BenchConfig()
QUICK = replace(FULL, num_train=5_000, num_test=20, noise_c=(1.0,), image_sigmas=(0.25,), epochs=5,
                n=10_000, seaas_num_test=2, seaas_copies=10, seaas_n=10_000, ds_n=2_000,
                denoiser_max_epochs=2, denoiser_channels=16, reference_max_epochs=2, reference_num_test=3,
                reference_n=10_000, lipschitz_max_epochs=2, semantic_num_test=3)


def build_parser() -> argparse.ArgumentParser:
    """Flags of the bench: one per BenchConfig field, default shown as full / quick."""
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced preset (make bench-quick, CI)")
    for item in fields(BenchConfig):
        full, quick = getattr(FULL, item.name), getattr(QUICK, item.name)
        shown = _show(full) if full == quick else f"{_show(full)} (quick: {_show(quick)})"
        kind = {"Path": Path, "int": int, "float": float, "str": str}.get(item.type, str)
        what = SUBSET_HELP if item.name.endswith("num_test") else ""
        if item.name == "parts":
            what = ("what runs, comma-separated: reaas (REaaS-BC / -SC / one-query and semantic), seaas-sc, "
                    "seaas-ds (on every encoder chosen), smoothed-cnn, lipschitz-cnn (white-box); ")
        if item.name == "encoders":
            what = "the encoders the service parts run on, comma-separated; "
        parser.add_argument("--" + item.name.replace("_", "-"), type=kind, default=None,
                            choices=CHOICES.get(item.name), help=f"{what}default {shown}")
    return parser


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(v if isinstance(v, str) else f"{v:g}" for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The preset (--quick or full) with every flag given on the command line applied."""
    config = QUICK if args.quick else FULL
    changes = {}
    for item in fields(BenchConfig):
        value = getattr(args, item.name)
        if value is None:
            continue
        if item.name in TUPLES:
            value = tuple(float(c) for c in value.split(","))
        elif item.name in ("parts", "encoders"):
            allowed = PARTS if item.name == "parts" else ENCODERS
            value = tuple(p.strip() for p in value.split(",") if p.strip())
            unknown = sorted(set(value) - set(allowed))
            if unknown or not value:
                raise SystemExit(f"--{item.name}: {', '.join(unknown) or 'nothing'} is not one of "
                                 f"{', '.join(allowed)}")
        changes[item.name] = value
    return replace(config, **changes)


def summary_of(rows: Sequence[dict], training_inputs: int = 0, training_queries: int = 0,
               training_bytes: int = 0) -> dict:
    """The bench's summary of journal rows: ``edge_client.metrics.summarize`` at the bench's radii."""
    return summarize(rows, radii=RADII, training_inputs=training_inputs, training_queries=training_queries,
                     training_bytes=training_bytes)


def _row(pipeline_name: str, encoder: str, summary: dict | None, note: str = "", **extra) -> dict:
    """One bench row from a summary (None: the pipeline is not possible, every value —)."""
    row = {"pipeline": pipeline_name, "encoder": encoder}
    if summary is None:
        row.update({c: None for c in COLUMNS[2:]})
    else:
        row.update({
            "sigma": None, "tuning_queries_per_train_input": 0.0,
            "queries_per_train_input": summary["queries_per_training_input"],
            "queries_per_test_input": summary["queries_per_test_input"],
            "bytes_per_test_input": summary["bytes_per_test_input"],
            "client_seconds_per_test_input": summary["client_seconds_per_test_input"],
            "server_seconds_per_test_input": summary["service_seconds_per_test_input"],
            "clean_accuracy": summary["clean_accuracy"],
            **{report.radius_key(r): summary["certified_accuracy"][f"{r:g}"] for r in RADII},
            "acr": summary["acr"], "n_test": summary["num_test"]})
    row["note"] = note
    row.update(extra)
    return row


def _raw(rows: Sequence[dict], summary: dict) -> dict:
    """A certified pipeline in the raw results: its journal rows and summary."""
    return {"rows": list(rows), "summary": summary}


def data_source(config: BenchConfig) -> DataSource:
    """The dataset the bench runs on."""
    return DataSource(config.dataset, config.data_root or None)


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="input", leave=False)


def _key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def onnx_input_shape(path: Path) -> tuple[int, ...] | None:
    """The image shape [C, H, W] an ONNX encoder takes (None where its graph leaves a dimension open)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    shape = tuple(int(d.dim_value) for d in dims)
    return shape if shape and all(shape) else None


def dataset_image_shape(config: BenchConfig) -> tuple[int, ...]:
    """[C, H, W] of the dataset's test images."""
    images, _ = data_source(config).load("test")
    return tuple(int(v) for v in images.shape[1:])


def choose_encoders(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """The encoders of the bench: robust and standard (each must take the dataset's images, else an error
    naming both shapes), and RoCL only when its file exists and takes the dataset's images."""
    encoders = {label: Path(path) for label, path in (("robust", config.robust_model),
                                                       ("standard", config.standard_model))
                if label in config.encoders}
    missing = [str(p) for p in encoders.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"model(s) {missing} not found (shipped in models/, or pass --robust-model / "
                         "--standard-model)")
    images = dataset_image_shape(config)
    for label, path in encoders.items():
        shape = onnx_input_shape(path)
        if shape is not None and shape != images:
            raise ValueError(f"the {label} encoder {path} takes images {list(shape)} but {config.dataset} "
                             f"images are {list(images)}: pass encoders pre-trained for this dataset")
    rocl = Path(config.rocl_model) if config.rocl_model else None
    if "rocl" not in config.encoders:
        return encoders
    if rocl is None or not rocl.is_file():
        log(f"no RoCL encoder at {config.rocl_model!r}: its rows are skipped")
    elif onnx_input_shape(rocl) not in (None, images):
        log(f"the RoCL encoder {rocl} takes images {list(onnx_input_shape(rocl))}, not {config.dataset}'s "
            f"{list(images)}: its rows are skipped")
    else:
        encoders["rocl"] = rocl
    return encoders


def denoiser_for(config: BenchConfig, sigma: float, rows: np.ndarray | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Train (or reuse) the SEaaS-DS DnCNN for ``sigma`` on the client's training images ``rows`` (default:
    all ``num_train``; MSE, to the validation-MSE plateau, no queries); cached under a name keyed by its
    training configuration and rows, so every encoder of the bench reuses it."""
    dconfig = DenoiserConfig(sigma=sigma, depth=config.denoiser_depth, channels=config.denoiser_channels,
                             epochs=config.denoiser_max_epochs, validation_fraction=0.1, patience=2,
                             threads=config.threads, seed=config.seed)
    images, _ = steps.training_images(data_source(config), config.num_train)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    key = _key(asdict(dconfig), hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest(),
               *((config.dataset, config.data_root) if config.dataset != "fashion-mnist" else ()))
    path = config.cache_dir / "denoisers" / f"dncnn-{key}.onnx"
    if path.is_file():
        return path
    started = time.perf_counter()
    history: list[float] = []

    def progress(phase: str, epoch: int, value: float) -> None:
        if phase == "validation":
            history.append(value)

    checkpoint = config.out / "journals" / f"dncnn-{key}.ckpt"  # shared by the encoders, like the denoiser
    model = train_denoiser(images[rows], dconfig, progress=progress, checkpoint=checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        export_denoiser_onnx(model, path, tuple(images.shape[1:]))
    best = int(np.argmin(history)) if history else -1
    info = {"sigma": sigma, "epochs_run": len(history), "best_epoch": best + 1, "validation_mse": history,
            "seconds": time.perf_counter() - started, "num_images": len(rows)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    log(f"denoiser sigma {sigma:g}: DnCNN {config.denoiser_depth} x {config.denoiser_channels} on "
        f"{len(rows):,} images, {len(history)} epochs (best {best + 1}), {info['seconds']:.0f} s")
    return path


def denoiser_info(path: Path) -> dict:
    """The training record written next to a denoiser (epochs, validation MSE)."""
    record = path.with_suffix(".json")
    return json.loads(record.read_text()) if record.is_file() else {}


def choose_image_sigma(baseline: str, encoder, config: BenchConfig, num_classes: int, journals: Path,
                       log: Callable[[str], None] = print) -> dict:
    """The SEaaS-SC / SEaaS-DS image sigma, chosen from ``config.image_sigmas`` on REaaS's validation rows.

    Per candidate: an MLP (REaaS's selection schedule: max(5, epochs // 2) epochs) on the selection rows'
    training part — SEaaS-SC on k noisy copies at that sigma (k queries each), SEaaS-DS on the clean
    features REaaS fetched (no new queries) behind a denoiser for that sigma trained on the same rows (the
    chosen sigma's final denoiser then trains on all training images) — scored by the image-space ACR of
    CERTIFY (n0 + selection_n queries each) on the validation rows. Returns {"sigma", "table", "queries",
    "bytes"}; kept in ``journals`` so a resumed bench repeats no query. One candidate: no selection.
    """
    if len(config.image_sigmas) == 1:
        return {"sigma": float(config.image_sigmas[0]), "table": [], "queries": 0, "bytes": 0}
    data = data_source(config)
    sha = encoder.pin.sha256 or ""
    key = _key(sha, config.image_sigmas, config.num_train, config.epochs, config.selection_images,
               config.validation_fraction, config.validation_size, config.selection_n, config.n0,
               config.alpha, config.seaas_copies, config.seed, config.denoiser_max_epochs,
               config.denoiser_depth, config.denoiser_channels, data)
    record = journals / f"select-{baseline}-{key}.json"
    if record.is_file():
        return json.loads(record.read_text())
    images, labels = steps.training_images(data, config.num_train)
    train_rows, val_rows = selection_rows(len(labels), config.selection_images, config.validation_fraction,
                                          config.validation_size, config.seed)
    schedule = TrainConfig(epochs=max(5, config.epochs // 2), noise_c=0.0, seed=config.seed)
    cache, usage = FeatureCache(config.cache_dir), encoder.usage

    def measure() -> tuple[int, int]:
        return usage.queries, usage.bytes

    table, queries, num_bytes = [], 0, 0
    for sigma in config.image_sigmas:
        started = time.perf_counter()
        denoiser = None
        if baseline == "SEaaS-SC":
            k = config.seaas_copies
            key = CacheKey(data.name, "train", tuple(int(r) for r in np.repeat(train_rows, k)), sha,
                           noisy_variant(sigma, k, config.seed))
            def fetch(s: float = sigma, k: int = k) -> np.ndarray:
                return fetch_noisy_training_features(encoder, images[train_rows], s, k, config.seed)

            features, (fetched, fetched_bytes), _ = cache.get_or_fetch(key, fetch, measure)
            fit_labels = np.repeat(labels[train_rows], k)
        else:
            key = CacheKey(data.name, "train", tuple(range(len(labels))), sha, "clean")  # REaaS's fetch
            everything, _, _ = cache.get_or_fetch(key, lambda: encoder.encode(images), measure)
            features, fit_labels, fetched, fetched_bytes = everything[train_rows], labels[train_rows], 0, 0
            denoiser = OnnxDenoiser(denoiser_for(config, sigma, train_rows, log), threads=config.threads)
        mlp = train_mlp(features, fit_labels, schedule, num_classes=num_classes,
                        checkpoint=record.with_name(f"{record.stem}-mlp-sigma{sigma:g}.npz"))
        smoothing = SmoothingConfig(sigma=sigma, n0=config.n0, n=config.selection_n, alpha=config.alpha,
                                    batch_size=4_096)
        before = measure()
        credit = 0.0
        for row in val_rows:
            cls, radius = certify_image(encoder, mlp, images[row], smoothing,
                                        input_rng(config.seed, int(row)), denoiser)
            credit += radius if cls == labels[row] else 0.0
        after = measure()
        spent = (fetched + after[0] - before[0], fetched_bytes + after[1] - before[1])
        queries, num_bytes = queries + spent[0], num_bytes + spent[1]
        table.append({"sigma": sigma, "validation_acr": credit / len(val_rows), "queries": spent[0],
                      "seconds": time.perf_counter() - started})
        log(f"  {baseline} sigma {sigma:g}: validation ACR {table[-1]['validation_acr']:.4f} "
            f"({spent[0]:,} queries, {table[-1]['seconds']:.0f} s)")
    best = max(table, key=lambda entry: entry["validation_acr"])
    choice = {"sigma": float(best["sigma"]), "table": table, "queries": queries, "bytes": num_bytes,
              "validation_rows": [int(r) for r in val_rows]}
    record.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(record, choice)
    return choice


def with_clean_predictions(rows: Sequence[dict], subset: Subset, classify: Callable[[np.ndarray], np.ndarray]
                           ) -> tuple[list[dict], int]:
    """SEaaS rows with ``clean_prediction``: the base classifier (``classify``, 1 query per image) on each
    clean test image, which CERTIFY's journal rows do not hold; (rows, images classified)."""
    position = {int(i): k for k, i in enumerate(subset.indices)}
    wanted = [position[int(r["index"])] for r in rows]
    clean = classify(subset.images[wanted]) if wanted else np.zeros(0, np.int64)
    return [{**row, "clean_prediction": int(c)} for row, c in zip(rows, clean, strict=True)], len(wanted)


def encoder_rows(encoder_label: str, model: Path, config: BenchConfig,
                 log: Callable[[str], None] = print) -> tuple[list[dict], dict, dict]:
    """All rows of one encoder over real services; (rows, curves {pipeline: (correct, radii)}, raw results).

    ``raw[pipeline]`` holds the journal rows and summary of each certified pipeline, ``raw["seconds"]`` the
    wall time of each step, and ``raw["same_inputs"]`` the REaaS-SC and SEaaS-SC summaries over exactly the
    SEaaS test inputs.
    """
    journals = config.out / "journals" / encoder_label
    data = data_source(config)
    reaas_subset = evaluation_subset(data, max(config.num_test, config.seaas_num_test))
    seaas_subset = evaluation_subset(data, config.seaas_num_test)
    base = CertifyConfig(n0=config.n0, n=config.n, alpha=config.alpha, seed=config.seed,
                         perturb_method=config.perturb_method)
    train = TrainConfig(epochs=config.epochs, seed=config.seed)
    raw: dict = {"seconds": {}, "choices": {}}
    with steps.local_services(model, steps.scratch_dir(f"reaas-bench-{encoder_label}-")) as endpoints:
        encoder, perturb = steps.connect_local(endpoints, timeout_s=config.perturb_timeout_s)
        steps.check_input_shape(encoder, data)

        def timed(step: str, started: float) -> float:
            raw["seconds"][step] = raw["seconds"].get(step, 0.0) + time.perf_counter() - started
            return raw["seconds"][step]

        def fit(name: str, downstream_config: DownstreamConfig, **options) -> Downstream:
            started = time.perf_counter()
            images, labels = steps.training_images(data, config.num_train)
            fitted = train_downstream(encoder, images, labels, downstream_config, cache_dir=config.cache_dir,
                                      dataset=data.name, **options)
            log(f"[{encoder_label}] {name} MLP: {fitted.training_inputs:,} inputs, "
                f"{fitted.training_queries:,} queries, {timed(f'{name} train', started):.0f} s")
            return fitted

        def certify(name: str, downstream: Downstream, subset: Subset, method_config: CertifyConfig,
                    clean: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
            started = time.perf_counter()
            with _bar(len(subset.indices), f"{encoder_label} {name}") as bar:
                certified = certify_subset(downstream, subset, encoder, perturb, method_config, journals,
                                           dataset=data.name, on_row=lambda row: bar.update(1))
            rows = certified.rows
            if clean is not None:
                rows, raw[f"{name} clean queries"] = with_clean_predictions(rows, subset, clean)
            raw[name] = _raw(rows, summary_of(rows, downstream.training_inputs, downstream.training_queries,
                                              downstream.training_bytes))
            log(f"[{encoder_label}] {name}: ACR {raw[name]['summary']['acr']:.4f}, "
                f"{timed(f'{name} certify', started):.0f} s")

        raw["synbench_score"] = encoder.model_info().synbench_score
        if "reaas" not in config.parts:
            num_classes = int(steps.training_images(data, config.num_train)[1].max()) + 1
        else:
            downstream = fit("REaaS", DownstreamConfig(noise_c_grid=config.noise_c, train=train,
                                                       selection_images=config.selection_images,
                                                       validation_fraction=config.validation_fraction))
            num_classes = downstream.mlp.num_classes
            certify("REaaS-BC", downstream, reaas_subset, replace(base, method=config.bc_method))
            certify("REaaS-SC", downstream, reaas_subset, replace(base, method="sc"))
            certify("REaaS-SC one-query", downstream, reaas_subset,
                    replace(base, method="sc-curve", perturb_method=config.curve_method))
            started = time.perf_counter()
            _, semantic_perturb = steps.connect_local(endpoints, timeout_s=config.semantic_timeout_s)
            raw["semantic"] = semantic_certificates(encoder_label, raw["REaaS-BC"]["rows"], reaas_subset,
                                                    semantic_perturb, config, journals,
                                                    not base.clip_to_pixel_box, log)
            timed("semantic", started)
            raw["noise_c"], raw["sigma_f"] = downstream.noise_c, downstream.sigma_f

        for name, method, n in (("SEaaS-SC", "seaas-sc", config.seaas_n),
                                ("SEaaS-DS", "seaas-ds", config.ds_n)):
            if method not in config.parts:
                continue
            started = time.perf_counter()
            choice = choose_image_sigma(name, encoder, config, num_classes, journals, log)
            raw["choices"][name] = choice
            timed(f"{name} sigma selection", started)
            sigma = choice["sigma"]
            if name == "SEaaS-SC":  # 1.5 M rows at full size: resumable per epoch
                dconfig = DownstreamConfig(baseline="seaas-sc", image_sigma=sigma, copies=config.seaas_copies,
                                           train=train)
                key = _key(encoder.pin.sha256 or "", asdict(dconfig), config.num_train, data)
                fitted = fit(name, dconfig, num_classes=num_classes,
                             checkpoint=journals / f"mlp-SEaaS-SC-{key}.npz")
                denoiser_path, denoiser = "", None
            else:
                started = time.perf_counter()
                denoiser_path = str(denoiser_for(config, sigma, log=log))
                timed("denoiser", started)
                raw["denoiser_epochs"] = denoiser_info(Path(denoiser_path)).get("epochs_run", "?")
                denoiser = OnnxDenoiser(denoiser_path, threads=config.threads)
                fitted = fit(name, DownstreamConfig(baseline="seaas-ds", train=train),
                             num_classes=num_classes)
            certify(name, fitted, seaas_subset,
                    replace(base, method=method, n=n, image_sigma=sigma, denoiser_path=denoiser_path),
                    clean=image_classifier(encoder, fitted.mlp, denoiser))
    raw["model_sha256"] = endpoints["model_sha256"]
    if "REaaS-SC" in raw and "SEaaS-SC" in raw:
        raw["same_inputs"] = {"test_indices": [int(i) for i in seaas_subset.indices],
                              "REaaS-SC": _subset_summary(raw["REaaS-SC"]["rows"], seaas_subset.indices,
                                                          downstream),
                              "SEaaS-SC": raw["SEaaS-SC"]["summary"]}
    return _encoder_table(encoder_label, config, raw), _curves(raw), raw


def _subset_summary(rows: Sequence[dict], indices: Sequence[int], downstream: Downstream) -> dict:
    """Summary of the rows whose index is in ``indices`` (the comparison on the same test inputs)."""
    wanted = {int(i) for i in indices}
    return summary_of([r for r in rows if int(r["index"]) in wanted], downstream.training_inputs,
                      downstream.training_queries, downstream.training_bytes)


def semantic_certificates(encoder_label: str, bc_rows: Sequence[dict], subset: Subset, perturb,
                          config: BenchConfig, journals: Path, l2_unclipped: bool,
                          log: Callable[[str], None] = print) -> dict:
    """Certified brightness / contrast ranges from the REaaS-BC feature radii of the first inputs, per kind.

    Each kind is journaled next to the ℓ2 rows; the summary sets the semantic certificate beside the range
    the ℓ2 radius alone implies (B = R/√d, C = R/‖x‖₂).
    """
    rows = list(bc_rows)[:config.semantic_num_test]
    if not rows:
        return {}
    images = {int(i): image for i, image in zip(subset.indices, subset.images, strict=True)}
    out = {}
    for kind in SEMANTIC_KINDS:
        started = time.perf_counter()
        with _bar(len(rows), f"{encoder_label} semantic {kind}") as bar:
            certified = certify_semantic(rows, images, perturb, kind, journals, l2_unclipped=l2_unclipped,
                                         on_row=lambda row, bar=bar: bar.update(1))
        out[kind] = _raw(certified.rows, certified.summary)
        ratio = out[kind]["summary"]["median_ratio_over_l2_implied"]
        log(f"[{encoder_label}] semantic {kind}: median certified / l2-implied "
            f"{'—' if ratio is None else f'{ratio:.3g}'}, {time.perf_counter() - started:.0f} s")
    return out


def semantic_table(raw_by_encoder: dict[str, dict]) -> list[dict]:
    """One row per encoder and kind: certified accuracy at the levels, semantic and ℓ2-implied."""
    table = []
    for label, raw in raw_by_encoder.items():
        for kind, entry in raw.get("semantic", {}).items():
            s = entry["summary"]
            row = {"encoder": label, "kind": kind, "n_test": s["num_test"]}
            for level in SEMANTIC_LEVELS[kind]:
                key = f"{level:g}"
                row[f"certified_{key}"] = s["certified_accuracy"][key]
                row[f"l2_implied_{key}"] = s["l2_implied_certified_accuracy"][key]
            row.update(mean_certified=s["mean_certified"], mean_l2_implied=s["mean_l2_implied"],
                       median_ratio=s["median_ratio_over_l2_implied"],
                       queries_per_test_input=s["queries_per_test_input"])
            table.append(row)
    return table


def semantic_markdown(table: Sequence[dict]) -> str:
    """One markdown table per perturbation kind (their levels differ)."""
    parts = []
    for kind in SEMANTIC_KINDS:
        rows = [r for r in table if r["kind"] == kind]
        if rows:
            parts.append(report.markdown_table(rows, list(rows[0])))
    return "\n\n".join(parts) or "(no semantic rows)"


def _encoder_table(encoder_label: str, config: BenchConfig, raw: dict) -> list[dict]:
    """The six pipeline rows of one encoder, in PIPELINES order."""
    smoothing = f"n0 = {config.n0}, n = {config.n:,}, alpha = {config.alpha:g}"
    choices = raw.get("choices", {})

    def chosen(name: str) -> str:
        choice = choices.get(name)
        if not choice or not choice["table"]:
            return f"image sigma {choice['sigma']:g} (fixed)" if choice else ""
        scores = ", ".join(f"{e['sigma']:g}: {e['validation_acr']:.3f}" for e in choice["table"])
        return (f"image sigma {choice['sigma']:g} chosen by validation ACR ({scores}; {choice['queries']:,} "
                f"tuning queries)")

    seaas_common = f"{config.num_train:,} train images, {config.epochs} epochs"
    notes = {
        "SEaaS-BC": ("not possible: bounds need the encoder's weights (black-box Feature-API only)", {}),
        "SEaaS-SC": (f"{chosen('SEaaS-SC')}; k = {config.seaas_copies} copies x {seaas_common}; "
                     f"n = {config.seaas_n:,}; +1 query per test input for clean acc.",
                     {"smoothing_n": config.seaas_n}),
        "SEaaS-DS": (f"DnCNN {config.denoiser_depth} x {config.denoiser_channels} (MSE, to the val-MSE "
                     f"plateau, <= {config.denoiser_max_epochs} epochs; chosen one: "
                     f"{raw.get('denoiser_epochs', '?')} epochs) per sigma; {chosen('SEaaS-DS')}; "
                     f"MLP on clean features, {seaas_common}; n = {config.ds_n:,}; +1 query per test input "
                     "for clean acc.",
                     {"smoothing_n": config.ds_n}),
        "REaaS-BC": (f"{config.bc_method}, F2IPerturb {config.perturb_method}", {}),
        "REaaS-SC": (f"feature sigma c = {raw.get('noise_c', float('nan')):g}, {smoothing}, F2IPerturb "
                     f"{config.perturb_method}",
                     {"smoothing_n": config.n}),
        "REaaS-SC one-query": (f"{smoothing}, F2IPerturbCurve {config.curve_method}",
                               {"smoothing_n": config.n}),
    }
    sigmas = {"SEaaS-SC": choices.get("SEaaS-SC", {}).get("sigma"),
              "SEaaS-DS": choices.get("SEaaS-DS", {}).get("sigma"),
              "REaaS-SC": raw.get("sigma_f"), "REaaS-SC one-query": raw.get("sigma_f")}
    rows = []
    for name in PIPELINES:
        if name != "SEaaS-BC" and name not in raw:  # not run (--parts)
            continue
        note, extra = notes[name]
        summary = raw[name]["summary"] if name in raw else None
        row = _row(name, encoder_label, summary, note, **extra)
        if summary is not None:
            row["sigma"] = sigmas.get(name)
            if name in choices:
                row["tuning_queries_per_train_input"] = choices[name]["queries"] / config.num_train
                row["clean_accuracy_queries"] = raw.get(f"{name} clean queries", 0)
        rows.append(row)
    return rows


def _curves(raw: dict) -> dict:
    return {name: steps.rows_to_curve(raw[name]["rows"]) for name in PIPELINES if name in raw}


def _journaled(config: BenchConfig, prefix: str, header: dict, subset: Subset,
               train_and_certify: Callable[[list[int], Callable[[dict], None]], dict]
               ) -> tuple[list[dict], dict]:
    """Rows of a white-box pipeline for ``subset``, journaled: ``train_and_certify(todo, append)`` runs only
    when some inputs are missing and returns its training record, kept next to the journal."""
    journal = Journal.keyed(config.out / "journals", prefix, header)
    record = journal.path.with_suffix(".training.json")
    todo = [k for k, index in enumerate(subset.indices) if int(index) not in journal.done]
    if todo:
        with _bar(len(todo), prefix) as bar:
            training = train_and_certify(todo, lambda row: (journal.append(row), bar.update(1)))
        report.write_json(record, training)
    wanted = {int(i) for i in subset.indices}
    rows = [row for row in journal.rows() if int(row["index"]) in wanted]
    return rows, (json.loads(record.read_text()) if record.is_file() else {})


def _epoch_log(what: str, max_epochs: int, log: Callable[[str], None]) -> Callable[[int, float], None]:
    """A progress callback of early-stopped training: one line per epoch with its validation loss."""
    def progress(epoch: int, validation_loss: float) -> None:
        log(f"[{what}] epoch {epoch + 1} of at most {max_epochs}: validation loss {validation_loss:.4f}")
    return progress


def reference_rows(config: BenchConfig, log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """The smoothed white-box CNNs, one per image sigma, and the best of them per radius; (rows, curves).

    Each CNN trains on noisy images to its validation plateau and is certified on the first
    ``reference_num_test`` inputs with n = ``reference_n``; rows are journaled (a resumed run trains a
    seeded CNN again only when some rows are missing).
    """
    data = data_source(config)
    subset = evaluation_subset(data, config.reference_num_test)
    rows_out, curves, per_sigma = [], {}, {}
    for sigma in config.image_sigmas:
        rconfig = ReferenceConfig(sigma=sigma, max_epochs=config.reference_max_epochs, threads=config.threads,
                                  seed=config.seed)
        smoothing = SmoothingConfig(sigma=sigma, n0=config.n0, n=config.reference_n, alpha=config.alpha,
                                    batch_size=2_000)
        header = {"reference": {**asdict(rconfig), "dataset": config.dataset, "data_root": config.data_root,
                                "num_train": config.num_train, "n0": config.n0, "n": config.reference_n,
                                "alpha": config.alpha}}

        def run(todo: list[int], append: Callable[[dict], None], rconfig: ReferenceConfig = rconfig,
                smoothing: SmoothingConfig = smoothing) -> dict:
            images, labels = steps.training_images(data, config.num_train)
            started = time.perf_counter()
            key = _key(asdict(rconfig), config.dataset, config.data_root, config.num_train)
            checkpoint = config.out / "journals" / f"reference-cnn-{key}.ckpt"
            model, training = train_reference(
                images, labels, rconfig, checkpoint=checkpoint, progress=_epoch_log(
                    f"reference sigma {rconfig.sigma:g}", rconfig.max_epochs, log))
            seconds = time.perf_counter() - started
            log(f"[reference sigma {rconfig.sigma:g}] CNN: {training.describe()}, {seconds:.0f} s")
            certify_reference(model, subset.indices[todo], subset.images[todo], subset.labels[todo],
                              smoothing, config.seed, threads=config.threads, on_row=append)
            return {**asdict(training), "describe": training.describe(), "train_seconds": seconds}

        rows, training = _journaled(config, f"reference-sigma{sigma:g}", header, subset, run)
        summary = summary_of(rows, training_inputs=config.num_train)
        note = (f"no service: end-to-end CNN on {config.num_train:,} noisy images, "
                f"{training.get('describe', 'trained earlier')}; n = {config.reference_n:,}")
        label = f"{REFERENCE}, sigma {sigma:g}"
        rows_out.append(_row(label, "white-box CNN", summary, note, sigma=sigma,
                             smoothing_n=config.reference_n, train_seconds=training.get("train_seconds")))
        curves[label] = steps.rows_to_curve(rows)
        per_sigma[sigma] = summary
    if len(per_sigma) > 1:
        rows_out.append(best_per_radius(per_sigma, config.reference_num_test))
    return rows_out, curves


def best_per_radius(per_sigma: dict[float, dict], n_test: int) -> dict:
    """The envelope row: per radius the best certified accuracy over the sigmas (and which sigma gave it).

    ACR and clean accuracy belong to one classifier each, so the envelope leaves them empty.
    """
    row = _row(REFERENCE_BEST, "white-box CNN", None, "per radius the best of the sigma rows above")
    best_sigma = {}
    for r in RADII:
        key = f"{r:g}"
        sigma = max(per_sigma, key=lambda s: per_sigma[s]["certified_accuracy"][key])
        row[report.radius_key(r)] = per_sigma[sigma]["certified_accuracy"][key]
        best_sigma[key] = sigma
    row.update(n_test=n_test, queries_per_train_input=0.0, queries_per_test_input=0.0,
               bytes_per_test_input=0.0, best_sigma_per_radius=best_sigma)
    return row


def lipschitz_row(config: BenchConfig, log: Callable[[str], None] = print) -> tuple[dict, tuple]:
    """The deterministic white-box reference: the AOL CNN (1-Lipschitz by construction) trained on labels
    to its validation plateau, certified by margin / (√2·L) on the first ``num_test`` inputs; (row, curve)."""
    data = data_source(config)
    subset = evaluation_subset(data, config.num_test)
    lconfig = LipschitzConfig(max_epochs=config.lipschitz_max_epochs, threads=config.threads,
                              seed=config.seed)
    header = {"lipschitz": {**asdict(lconfig), "dataset": config.dataset, "data_root": config.data_root,
                            "num_train": config.num_train}}

    def run(todo: list[int], append: Callable[[dict], None]) -> dict:
        images, labels = steps.training_images(data, config.num_train)
        started = time.perf_counter()
        key = _key(asdict(lconfig), config.dataset, config.data_root, config.num_train)
        checkpoint = config.out / "journals" / f"lipschitz-cnn-{key}.ckpt"
        model, training = train_lipschitz_cnn(images, labels, lconfig, checkpoint=checkpoint,
                                              progress=_epoch_log("lipschitz", lconfig.max_epochs, log))
        seconds = time.perf_counter() - started
        log(f"[lipschitz] AOL CNN: {training.describe()}, {seconds:.0f} s")
        certify_lipschitz(model, subset.indices[todo], subset.images[todo], subset.labels[todo],
                          on_row=append)
        return {**asdict(training), "describe": training.describe(), "train_seconds": seconds}

    rows, training = _journaled(config, "lipschitz-cnn", header, subset, run)
    summary = summary_of(rows, training_inputs=config.num_train)
    note = (f"no service, no smoothing: AOL layers (L = 1 proven), offset CE (u = "
            f"{lconfig.margin_offset:.3g}), {config.num_train:,} images, "
            f"{training.get('describe', 'trained earlier')}; radius = margin / (sqrt 2 L)")
    return (_row(LIPSCHITZ, "white-box CNN", summary, note, train_seconds=training.get("train_seconds")),
            steps.rows_to_curve(rows))


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None where undefined (a zero or missing denominator)."""
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return float(numerator) / float(denominator)


def compare(raw_by_encoder: dict[str, dict]) -> dict:
    """The ratios the README promises, per encoder, from the measured counters (pure function of raw)."""
    out: dict = {}
    for label, raw in raw_by_encoder.items():
        if "same_inputs" not in raw:  # REaaS-SC or SEaaS-SC not run (--parts)
            continue
        same = raw["same_inputs"]
        reaas, seaas = same["REaaS-SC"], same["SEaaS-SC"]
        bytes_ratio = _ratio(seaas["bytes_per_test_input"], reaas["bytes_per_test_input"])
        out[label] = {
            "test_indices": same["test_indices"],
            "reaas_sc_queries_per_test_input": reaas["queries_per_test_input"],
            "seaas_sc_queries_per_test_input": seaas["queries_per_test_input"],
            "queries_ratio": _ratio(seaas["queries_per_test_input"], reaas["queries_per_test_input"]),
            "reaas_sc_bytes_per_test_input": reaas["bytes_per_test_input"],
            "seaas_sc_bytes_per_test_input": seaas["bytes_per_test_input"],
            "bytes_ratio": bytes_ratio, "bytes_ratio_goal": 1e4,
            "bytes_ratio_goal_met": bytes_ratio is not None and bytes_ratio >= 1e4,
            "reaas_sc_acr": reaas["acr"], "seaas_sc_acr": seaas["acr"],
            "acr_ratio_reaas_over_seaas": _ratio(reaas["acr"], seaas["acr"]),
            "acr_goal_met": reaas["acr"] >= seaas["acr"] and reaas["acr"] > 0,  # 0 vs 0 certifies nothing
        }
    if {"robust", "standard"} <= raw_by_encoder.keys() and all(
            "REaaS-SC" in raw for raw in raw_by_encoder.values()):
        robust, standard = raw_by_encoder["robust"], raw_by_encoder["standard"]
        for name, key in (("REaaS-BC", "bc"), ("REaaS-SC", "sc")):
            ratio = _ratio(robust[name]["summary"]["acr"], standard[name]["summary"]["acr"])
            out[f"robust_over_standard_acr_{key}"] = ratio
            out[f"robust_over_standard_acr_{key}_goal_met"] = (
                robust[name]["summary"]["acr"] >= 10 * standard[name]["summary"]["acr"]
                and robust[name]["summary"]["acr"] > 0)
        out["robust_over_others"] = {  # e.g. RoCL, the source's other pre-training baseline
            other: {key: _ratio(robust[name]["summary"]["acr"], raw_by_encoder[other][name]["summary"]["acr"])
                    for name, key in (("REaaS-BC", "bc"), ("REaaS-SC", "sc"))}
            for other in sorted(set(raw_by_encoder) - {"robust", "standard"})}
        scores = {label: raw.get("synbench_score") for label, raw in raw_by_encoder.items()}
        if all(isinstance(v, float) and v > 0 for v in scores.values()):
            out["synbench_score"] = scores
            out["synbench_ranks_like_acr"] = synbench_ranks_like_acr(raw_by_encoder)
    return out


def versus_smoothed_cnn(raw_by_encoder: dict[str, dict], best: dict, indices: Sequence[int]) -> dict:
    """Per encoder, REaaS-SC's certified accuracy on the smoothed white-box CNNs' test inputs (``indices``)
    against ``best`` (the best-sigma-per-radius row, or the one sigma's row) at every radius; pure."""
    wanted = {int(i) for i in indices}
    out = {}
    for label, raw in raw_by_encoder.items():
        if "REaaS-SC" not in raw:
            continue
        rows = [r for r in raw["REaaS-SC"]["rows"] if int(r["index"]) in wanted]
        if len(rows) != len(wanted):  # REaaS certified fewer inputs than the CNNs: no like-for-like
            continue
        ours = summary_of(rows)["certified_accuracy"]
        sigmas = best.get("best_sigma_per_radius", {})
        per_radius = {f"{r:g}": {"reaas_sc": ours[f"{r:g}"], "best_smoothed_cnn": best[report.radius_key(r)],
                                 "cnn_sigma": sigmas.get(f"{r:g}", best.get("sigma"))}
                      for r in RADII}
        out[label] = {"test_indices": sorted(wanted), "per_radius": per_radius,
                      "beats_at_every_r_from_0.25": all(v["reaas_sc"] > v["best_smoothed_cnn"]
                                                        for k, v in per_radius.items() if float(k) >= 0.25)}
    return out


def synbench_ranks_like_acr(raw_by_encoder: dict[str, dict]) -> bool:
    """Whether SynBench scores order every pair of encoders as their REaaS-BC and REaaS-SC ACR do."""
    labels = sorted(raw_by_encoder)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            higher = raw_by_encoder[a]["synbench_score"] > raw_by_encoder[b]["synbench_score"]
            for name in ("REaaS-BC", "REaaS-SC"):
                acr_a, acr_b = (raw_by_encoder[x][name]["summary"]["acr"] for x in (a, b))
                if acr_a != acr_b and higher != (acr_a > acr_b):
                    return False
    return True


def _inputs(indices: Sequence[int]) -> str:
    """'3 test inputs 0, 20, 40' or, for long lists, '50 test inputs 0, 20, …, 980'."""
    shown = indices if len(indices) <= 4 else [*indices[:2], "…", indices[-1]]
    return f"{len(indices)} test inputs {', '.join(str(i) for i in shown)}"


def ratio_lines(ratios: dict) -> list[str]:
    """Human-readable lines of :func:`compare`'s output."""
    def fmt(value) -> str:
        return "—" if value is None else f"{value:,.4g}"

    lines = []
    for label, r in ratios.items():
        if not (isinstance(r, dict) and "test_indices" in r):  # only the per-encoder comparisons
            continue
        lines.append(
            f"- {label}: on the {_inputs(r['test_indices'])}: queries per test input REaaS-SC "
            f"{fmt(r['reaas_sc_queries_per_test_input'])} vs SEaaS-SC "
            f"{fmt(r['seaas_sc_queries_per_test_input'])} ({fmt(r['queries_ratio'])}x); "
            f"bytes {fmt(r['reaas_sc_bytes_per_test_input'])} vs "
            f"{fmt(r['seaas_sc_bytes_per_test_input'])} (ratio {fmt(r['bytes_ratio'])}, goal >= 1e4: "
            f"{'met' if r['bytes_ratio_goal_met'] else 'NOT met'}); ACR REaaS-SC {fmt(r['reaas_sc_acr'])} vs "
            f"SEaaS-SC {fmt(r['seaas_sc_acr'])} (goal >=: {'met' if r['acr_goal_met'] else 'NOT met'})")
    if "synbench_score" in ratios:
        scores = ratios["synbench_score"]
        shown = ", ".join(f"{label} {fmt(value)}" for label, value in scores.items())
        lines.append(f"- SynBench score (ModelInfo): {shown}; ranks the encoders like their REaaS-BC and "
                     f"REaaS-SC ACR: {'yes' if ratios['synbench_ranks_like_acr'] else 'NO'}")
    for label, r in ratios.get("versus_smoothed_cnn", {}).items():
        shown = ", ".join(f"r = {k}: {v['reaas_sc']:.3f} vs {v['best_smoothed_cnn']:.3f}"
                          for k, v in r["per_radius"].items())
        lines.append(f"- {label}: certified accuracy REaaS-SC vs the best smoothed white-box CNN on the "
                     f"{_inputs(r['test_indices'])}: {shown}; REaaS-SC ahead at every r >= 0.25: "
                     f"{'yes' if r['beats_at_every_r_from_0.25'] else 'NO'}")
    for other, r in ratios.get("robust_over_others", {}).items():
        lines.append(f"- robust / {other} ACR: REaaS-BC {fmt(r['bc'])}, REaaS-SC {fmt(r['sc'])}")
    for key in ("bc", "sc"):
        if f"robust_over_standard_acr_{key}" in ratios:
            met = ratios[f"robust_over_standard_acr_{key}_goal_met"]
            lines.append(f"- robust / standard ACR, REaaS-{key.upper()}: "
                         f"{fmt(ratios[f'robust_over_standard_acr_{key}'])} (goal >= 10: "
                         f"{'met' if met else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the bench; returns the process exit code."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    encoders = choose_encoders(config) if set(SERVICE_PARTS) & set(config.parts) else {}
    interrupt_on_sigterm()
    started = time.perf_counter()
    preset = "full" if config == FULL else "quick" if config == QUICK else "custom"
    print(f"bench ({preset}): {config}", flush=True)
    rows: list[dict] = []
    curves: dict = {}
    raw_by_encoder: dict = {}
    seconds: dict = {}
    for label, model in encoders.items():
        encoder_table, encoder_curves, raw = encoder_rows(label, model, config)
        rows += encoder_table
        raw_by_encoder[label] = raw
        seconds[label] = raw["seconds"]
        curves.update({f"{label}: {name}": curve for name, curve in encoder_curves.items()
                       if name in PLOTTED and (label == "robust" or name.startswith("REaaS"))})
    reference_table: list[dict] = []
    if "smoothed-cnn" in config.parts:
        step = time.perf_counter()
        reference_table, reference_curves = reference_rows(config)
        seconds["white-box smoothed CNNs"] = time.perf_counter() - step
        rows += reference_table
        curves.update(reference_curves)
    if "lipschitz-cnn" in config.parts:
        step = time.perf_counter()
        row, curve = lipschitz_row(config)
        seconds["white-box Lipschitz CNN"] = time.perf_counter() - step
        rows.append(row)
        curves[LIPSCHITZ] = curve
    ratios = compare(raw_by_encoder)
    if reference_table:
        indices = evaluation_subset(data_source(config), config.reference_num_test).indices
        ratios["versus_smoothed_cnn"] = versus_smoothed_cnn(raw_by_encoder, reference_table[-1], indices)
    semantic = semantic_table(raw_by_encoder)
    wall = time.perf_counter() - started
    table = report.markdown_table(rows, [*COLUMNS, "note"])
    semantic_md = semantic_markdown(semantic)
    print()
    print(table)
    print()
    print("\n".join(ratio_lines(ratios)))
    print()
    print(semantic_md)
    command = "python -m jobs.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"rows": rows, "ratios": ratios, "semantic": semantic,
               "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
               "preset": preset, "command": command.strip(), "wall_seconds": wall, "step_seconds": seconds,
               "models": {label: {"path": str(encoders[label]), "sha256": raw["model_sha256"],
                                  "noise_c": raw.get("noise_c"), "sigma_f": raw.get("sigma_f"),
                                  "image_sigma_choices": raw["choices"]}
                          for label, raw in raw_by_encoder.items()}}
    report.write_json(config.out / "bench.json", payload)
    markdown = [f"# REaaS bench ({preset})", "",
                f"`{command.strip()}` — {wall:.0f} s wall", "", table, "",
                "Ratios (REaaS-SC vs SEaaS-SC on the same test inputs):", "", *ratio_lines(ratios), "",
                "Semantic certificates (F2ISemantic on the REaaS-BC feature radii; certified accuracy at "
                "|b| / |c - 1| levels, against the range the l2 radius alone implies):", "", semantic_md, "",
                "![certified accuracy](bench.png)", ""]
    (config.out / "bench.md").write_text("\n".join(markdown))
    report.plot_certified_accuracy(curves, config.out / "bench.png",
                                   f"{config.dataset}: SEaaS vs REaaS ({config.num_test} / "
                                   f"{config.seaas_num_test} test inputs)")
    print(f"\nwrote {config.out / 'bench.md'}, bench.json and bench.png in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    run_script(main)
