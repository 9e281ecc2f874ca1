"""``make bench``: SEaaS against REaaS, measured side by side over real gRPC on loopback.

For each encoder (robust, standard) the services are started with a fresh API key and the edge client runs:
SEaaS-BC (not possible without the encoder's weights: no row values), SEaaS-SC (image-space smoothing, k noisy
copies per training input, n0 + n queries per test input, on a small subset), SEaaS-DS (a client-trained
DnCNN denoiser in front of the encoder, MLP on clean features), REaaS-BC, REaaS-SC (2 queries per test input)
and REaaS-SC one-query (1). One reference row: a small CNN trained on noisy images and smoothed in image
space with full white-box access (no service). REaaS-SC is also summarized on exactly the SEaaS test inputs,
and the ratios the README promises (queries, bytes, ACR) are computed from the measured counters.
Writes ``results/bench.md``, ``results/bench.json`` and ``results/bench.png``; journals make it resumable.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from tqdm import tqdm

from edge_client.certification import CertifyConfig
from edge_client.journal import Journal
from edge_client.metrics import DEFAULT_RADII, summarize
from edge_client.seaas_baselines import DenoiserConfig
from edge_client.semantic import KINDS as SEMANTIC_KINDS
from edge_client.semantic import LEVELS as SEMANTIC_LEVELS
from edge_client.smoothing import SmoothingConfig
from edge_client.training import TrainConfig
from edge_client.workflow import (
    CertifiedSubset,
    Downstream,
    DownstreamConfig,
    Subset,
    certify_semantic,
    certify_subset,
    evaluation_subset,
    train_denoiser_onnx,
    train_downstream,
)
from jobs import report, steps
from jobs.entry import interrupt_on_sigterm, run_script
from jobs.reference_cnn import ReferenceConfig, certify_reference, train_reference
from reaas.datasets import LOADERS, DataSource
from reaas.methods import PERTURB_METHODS as PERTURB_METHOD_TABLE

RADII = tuple(r for r in DEFAULT_RADII if r > 0)
COLUMNS = ["pipeline", "encoder", "queries_per_train_input", "queries_per_test_input", "bytes_per_test_input",
           "client_seconds_per_test_input", "server_seconds_per_test_input", "clean_accuracy",
           *(report.radius_key(r) for r in RADII), "acr", "n_test"]
PIPELINES = ("SEaaS-BC", "SEaaS-SC", "SEaaS-DS", "REaaS-BC", "REaaS-SC", "REaaS-SC one-query")
REFERENCE = "Reference CNN (white-box SC)"
PLOTTED = ("SEaaS-SC", "SEaaS-DS", "REaaS-BC", "REaaS-SC")
PERTURB_METHODS = tuple(PERTURB_METHOD_TABLE)
SUBSET_HELP = "first N of the evaluation subset, test indices ≡ 0 mod 20 (0, 20, 40, …); "
CHOICES = {"bc_method": ("bc-crown", "bc-ibp"), "perturb_method": PERTURB_METHODS,
           "curve_method": PERTURB_METHODS, "dataset": tuple(LOADERS)}


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of the bench; ``FULL`` and ``QUICK`` are the presets, flags override single fields."""

    robust_model: Path = Path("models/fmnist-robust.onnx")
    standard_model: Path = Path("models/fmnist-standard.onnx")
    rocl_model: str = "models/fmnist-rocl.onnx"  # adversarial contrastive baseline; skipped if empty/absent
    dataset: str = "fashion-mnist"  # both encoders must take its images (README: your own CIFAR10/SVHN/STL10)
    data_root: str = ""  # directory of the dataset's files; empty = the default place
    num_train: int = 60_000  # REaaS and SEaaS-DS training inputs (1 query each)
    num_test: int = 100  # REaaS rows: first N of the evaluation subset (test indices ≡ 0 mod 20)
    noise_c: tuple[float, ...] = (0.5, 1.0, 2.0)  # REaaS-SC sigma_F = c * S / sqrt(d), chosen on validation
    epochs: int = 20  # MLP epochs (every MLP of the bench)
    n0: int = 100
    n: int = 100_000  # REaaS-SC smoothing samples (feature space, no queries)
    alpha: float = 0.001
    bc_method: str = "bc-crown"  # client-side bound of the MLP for REaaS-BC
    perturb_method: str = "auto"  # F2IPerturb bound of the 2-query paths (BC, SC)
    curve_method: str = "local_lipschitz"  # F2IPerturbCurve bound of the one-query path
    perturb_timeout_s: float = 20.0  # deadline of each call
    image_sigma: float = 0.25  # SEaaS-SC / SEaaS-DS / reference: image-space noise std, pixel units
    seaas_num_test: int = 50  # SEaaS-SC / SEaaS-DS test inputs (a prefix of the REaaS ones)
    seaas_num_train: int = 10_000  # SEaaS-SC training images (x seaas_copies queries each)
    seaas_copies: int = 25  # k noisy copies per SEaaS-SC training image (the source uses 25)
    seaas_n: int = 100_000  # SEaaS-SC samples per test input (each one Encode query)
    seaas_epochs: int = 10  # epochs of the SEaaS-SC and SEaaS-DS MLPs
    ds_n: int = 10_000  # SEaaS-DS samples per test input (the client runs its DnCNN on every copy)
    denoiser_num_train: int = 3_000  # images the client trains its DnCNN on (no queries)
    denoiser_epochs: int = 3
    denoiser_depth: int = 4
    denoiser_channels: int = 32
    reference_num_train: int = 20_000
    reference_epochs: int = 3
    reference_num_test: int = 20
    reference_n: int = 100_000
    semantic_num_test: int = 20  # REaaS-BC inputs whose brightness / contrast ranges F2ISemantic certifies
    seed: int = 0
    out: Path = Path("results")
    cache_dir: Path = Path(".cache/features")


FULL = BenchConfig()
QUICK = replace(FULL, num_train=5_000, num_test=20, noise_c=(1.0,), epochs=5, n=10_000, seaas_num_test=1,
                seaas_num_train=500, seaas_n=100_000, seaas_epochs=5, ds_n=2_000, denoiser_num_train=1_000,
                denoiser_epochs=2, denoiser_depth=4, denoiser_channels=16, reference_num_train=5_000,
                reference_epochs=2, reference_num_test=3, reference_n=10_000,
                semantic_num_test=3)


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
        parser.add_argument("--" + item.name.replace("_", "-"), type=kind, default=None,
                            choices=CHOICES.get(item.name), help=f"{what}default {shown}")
    return parser


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The preset (--quick or full) with every flag given on the command line applied."""
    config = QUICK if args.quick else FULL
    changes = {}
    for item in fields(BenchConfig):
        value = getattr(args, item.name)
        if value is None:
            continue
        changes[item.name] = tuple(float(c) for c in value.split(",")) if item.name == "noise_c" else value
    return replace(config, **changes)


def _row(pipeline_name: str, encoder: str, summary: dict | None, note: str = "", **extra) -> dict:
    """One bench row from an edge_client summary (None: the pipeline is not possible, every value —)."""
    row = {"pipeline": pipeline_name, "encoder": encoder}
    if summary is None:
        row.update({c: None for c in COLUMNS[2:]})
    else:
        row.update({
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


def _subset_summary(rows: Sequence[dict], indices: Sequence[int], downstream: Downstream) -> dict:
    """Summary of the rows whose index is in ``indices`` (the comparison on the same test inputs)."""
    wanted = {int(i) for i in indices}
    return downstream.summarize([r for r in rows if int(r["index"]) in wanted])


def _raw(certified: CertifiedSubset) -> dict:
    """A certified pipeline in the raw results: its journal rows and summary."""
    return {"rows": certified.rows, "summary": certified.summary}


def data_source(config: BenchConfig) -> DataSource:
    """The dataset the bench runs on."""
    return DataSource(config.dataset, config.data_root or None)


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="input", leave=False)


def _denoiser_path(config: BenchConfig) -> Path:
    """Where the client's DnCNN is kept (keyed by its training configuration; reused by later runs)."""
    key = repr((config.image_sigma, config.denoiser_num_train, config.denoiser_epochs, config.denoiser_depth,
                config.denoiser_channels, config.seed) + ((config.dataset, config.data_root)
                                                          if config.dataset != "fashion-mnist" else ()))
    return config.cache_dir / "denoisers" / f"dncnn-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"


def client_denoiser(config: BenchConfig, log: Callable[[str], None] = print) -> Path:
    """Train (or reuse) the SEaaS-DS denoiser on the client's own training images (MSE, no queries)."""
    path = _denoiser_path(config)
    if path.is_file():
        return path
    import torch

    torch.set_num_threads(1)
    images, _ = steps.training_images(data_source(config), config.denoiser_num_train)
    started = time.perf_counter()
    train_denoiser_onnx(images, DenoiserConfig(sigma=config.image_sigma, depth=config.denoiser_depth,
                                               channels=config.denoiser_channels,
                                               epochs=config.denoiser_epochs, seed=config.seed), path)
    log(f"denoiser: DnCNN depth {config.denoiser_depth} x {config.denoiser_channels} on "
        f"{config.denoiser_num_train} images, {time.perf_counter() - started:.0f} s -> {path}")
    return path


def encoder_rows(encoder_label: str, model: Path, config: BenchConfig, denoiser_path: Path | None,
                 log: Callable[[str], None] = print) -> tuple[list[dict], dict, dict]:
    """All rows of one encoder over real services; (rows, curves {pipeline: (correct, radii)}, raw results).

    ``raw[pipeline]`` holds the journal rows and summary of each certified pipeline, and
    ``raw["same_inputs"]`` the REaaS-SC and SEaaS-SC summaries over exactly the SEaaS test inputs.
    """
    journals = config.out / "journals" / encoder_label
    data = data_source(config)
    reaas_subset = evaluation_subset(data, max(config.num_test, config.seaas_num_test))
    seaas_subset = evaluation_subset(data, config.seaas_num_test)
    base = CertifyConfig(n0=config.n0, n=config.n, alpha=config.alpha, seed=config.seed,
                         perturb_method=config.perturb_method, image_sigma=config.image_sigma)
    train = TrainConfig(epochs=config.epochs, seed=config.seed)
    seaas_train = TrainConfig(epochs=config.seaas_epochs, seed=config.seed)
    raw: dict = {}
    with steps.local_services(model, steps.scratch_dir(f"reaas-bench-{encoder_label}-")) as endpoints:
        encoder, perturb = steps.connect_local(endpoints, timeout_s=config.perturb_timeout_s)
        steps.check_input_shape(encoder, data)

        def fit(name: str, num_train: int, downstream_config: DownstreamConfig, **options) -> Downstream:
            started = time.perf_counter()
            images, labels = steps.training_images(data, num_train)
            fitted = train_downstream(encoder, images, labels, downstream_config, cache_dir=config.cache_dir,
                                      dataset=data.name, **options)
            log(f"[{encoder_label}] {name} MLP: {fitted.training_inputs} inputs, noise c = "
                f"{fitted.noise_c:g}, {time.perf_counter() - started:.0f} s")
            return fitted

        def certify(name: str, downstream: Downstream, subset: Subset, method_config: CertifyConfig) -> None:
            started = time.perf_counter()
            with _bar(len(subset.indices), f"{encoder_label} {name}") as bar:
                raw[name] = _raw(certify_subset(downstream, subset, encoder, perturb, method_config, journals,
                                                dataset=data.name, on_row=lambda row: bar.update(1)))
            log(f"[{encoder_label}] {name}: ACR {raw[name]['summary']['acr']:.4f}, "
                f"{time.perf_counter() - started:.0f} s")

        downstream = fit("REaaS", config.num_train,
                         DownstreamConfig(noise_c_grid=config.noise_c, train=train))
        certify("REaaS-BC", downstream, reaas_subset, replace(base, method=config.bc_method))
        certify("REaaS-SC", downstream, reaas_subset, replace(base, method="sc"))
        certify("REaaS-SC one-query", downstream, reaas_subset,
                replace(base, method="sc-curve", perturb_method=config.curve_method))
        raw["semantic"] = semantic_certificates(encoder_label, raw["REaaS-BC"]["rows"], reaas_subset, perturb,
                                                config, journals, not base.clip_to_pixel_box, log)
        raw["synbench_score"] = encoder.model_info().synbench_score

        num_classes = downstream.mlp.num_classes
        seaas_sc = fit("SEaaS-SC", config.seaas_num_train,
                       DownstreamConfig(baseline="seaas-sc", image_sigma=config.image_sigma,
                                        copies=config.seaas_copies, train=seaas_train),
                       num_classes=num_classes)
        certify("SEaaS-SC", seaas_sc, seaas_subset, replace(base, method="seaas-sc", n=config.seaas_n))
        if denoiser_path is not None:
            seaas_ds = fit("SEaaS-DS", config.num_train,
                           DownstreamConfig(baseline="seaas-ds", train=seaas_train), num_classes=num_classes)
            certify("SEaaS-DS", seaas_ds, seaas_subset,
                    replace(base, method="seaas-ds", n=config.ds_n, denoiser_path=str(denoiser_path)))
    raw["model_sha256"] = endpoints["model_sha256"]
    raw["noise_c"], raw["sigma_f"] = downstream.noise_c, downstream.sigma_f
    raw["same_inputs"] = {"test_indices": [int(i) for i in seaas_subset.indices],
                          "REaaS-SC": _subset_summary(raw["REaaS-SC"]["rows"], seaas_subset.indices,
                                                      downstream),
                          "SEaaS-SC": raw["SEaaS-SC"]["summary"]}
    return _encoder_table(encoder_label, config, raw), _curves(raw), raw


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
            out[kind] = _raw(certify_semantic(rows, images, perturb, kind, journals,
                                              l2_unclipped=l2_unclipped,
                                              on_row=lambda row, bar=bar: bar.update(1)))
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
    notes = {
        "SEaaS-BC": ("not possible: bounds need the encoder's weights (black-box Feature-API only)", {}),
        "SEaaS-SC": (f"image sigma {config.image_sigma:g}, k = {config.seaas_copies} copies x "
                     f"{config.seaas_num_train:,} train images, n = {config.seaas_n:,} on "
                     f"{config.seaas_num_test} test inputs", {"smoothing_n": config.seaas_n}),
        "SEaaS-DS": (f"DnCNN (MSE) + image sigma {config.image_sigma:g}, n = {config.ds_n:,} on "
                     f"{config.seaas_num_test} test inputs", {"smoothing_n": config.ds_n}),
        "REaaS-BC": (f"{config.bc_method}, F2IPerturb {config.perturb_method}", {}),
        "REaaS-SC": (f"feature sigma c = {raw['noise_c']:g}, {smoothing}, F2IPerturb {config.perturb_method}",
                     {"smoothing_n": config.n}),
        "REaaS-SC one-query": (f"{smoothing}, F2IPerturbCurve {config.curve_method}",
                               {"smoothing_n": config.n}),
    }
    rows = []
    for name in PIPELINES:
        note, extra = notes[name]
        summary = raw[name]["summary"] if name in raw else None
        if name == "SEaaS-DS" and summary is None:
            note = "skipped (no denoiser)"
        rows.append(_row(name, encoder_label, summary, note, **extra))
    return rows


def _curves(raw: dict) -> dict:
    return {name: steps.rows_to_curve(raw[name]["rows"]) for name in PIPELINES if name in raw}


def reference_row(config: BenchConfig, log: Callable[[str], None] = print) -> tuple[dict, tuple]:
    """The white-box reference: train the CNN on noisy images, certify in image space; (row, curve).

    Rows are journaled like the service pipelines; a resumed run trains the (seeded) CNN again only
    when some rows are still missing.
    """
    data = data_source(config)
    indices, test_images, test_labels = evaluation_subset(data, config.reference_num_test)
    header = {"reference": {k: getattr(config, k) for k in (
        "dataset", "data_root", "image_sigma", "reference_num_train", "reference_epochs", "n0", "reference_n",
        "alpha", "seed")}}
    journal = Journal.keyed(config.out / "journals", "reference", header)
    todo = [k for k, index in enumerate(indices) if int(index) not in journal.done]
    if todo:
        images, labels = data.load("train")
        started = time.perf_counter()
        model = train_reference(images[:config.reference_num_train], labels[:config.reference_num_train],
                                ReferenceConfig(sigma=config.image_sigma, epochs=config.reference_epochs,
                                                seed=config.seed))
        log(f"[reference] CNN trained on {config.reference_num_train} noisy images in "
            f"{time.perf_counter() - started:.0f} s")
        smoothing = SmoothingConfig(sigma=config.image_sigma, n0=config.n0, n=config.reference_n,
                                    alpha=config.alpha)
        with _bar(len(todo), "reference CNN") as bar:
            certify_reference(model, indices[todo], test_images[todo], test_labels[todo], smoothing,
                              config.seed, on_row=lambda row: (journal.append(row), bar.update(1)))
    wanted = {int(i) for i in indices}
    rows = [row for row in journal.rows() if int(row["index"]) in wanted]
    summary = summarize(rows, training_inputs=config.reference_num_train)
    note = (f"no service: end-to-end CNN, image sigma {config.image_sigma:g}, n = {config.reference_n:,}, "
            f"{config.reference_epochs} epochs on {config.reference_num_train:,} images")
    row = _row(REFERENCE, "white-box CNN", summary, note, smoothing_n=config.reference_n)
    return row, steps.rows_to_curve(rows)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None where undefined (a zero or missing denominator)."""
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return float(numerator) / float(denominator)


def compare(raw_by_encoder: dict[str, dict]) -> dict:
    """The ratios the README promises, per encoder, from the measured counters (pure function of raw)."""
    out: dict = {}
    for label, raw in raw_by_encoder.items():
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
    if {"robust", "standard"} <= raw_by_encoder.keys():
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
    encoders = {"robust": config.robust_model, "standard": config.standard_model}
    missing = [str(p) for p in encoders.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"model(s) {missing} not found (shipped in models/, or pass --robust-model / "
                         "--standard-model)")
    if config.rocl_model and Path(config.rocl_model).is_file():
        encoders["rocl"] = Path(config.rocl_model)
    else:
        print(f"no RoCL encoder at {config.rocl_model!r}: its rows are skipped", flush=True)
    interrupt_on_sigterm()
    started = time.perf_counter()
    preset = "full" if config == FULL else "quick" if config == QUICK else "custom"
    print(f"bench ({preset}): {config}", flush=True)
    denoiser = client_denoiser(config)
    rows: list[dict] = []
    curves: dict = {}
    raw_by_encoder: dict = {}
    for label, model in encoders.items():
        encoder_table, encoder_curves, raw = encoder_rows(label, model, config, denoiser)
        rows += encoder_table
        raw_by_encoder[label] = raw
        curves.update({f"{label}: {name}": curve for name, curve in encoder_curves.items()
                       if name in PLOTTED and (label == "robust" or name.startswith("REaaS"))})
    row, curve = reference_row(config)
    rows.append(row)
    curves[REFERENCE] = curve
    ratios = compare(raw_by_encoder)
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
               "preset": preset, "command": command.strip(), "wall_seconds": wall,
               "models": {label: {"path": str(encoders[label]), "sha256": raw["model_sha256"],
                                  "noise_c": raw["noise_c"], "sigma_f": raw["sigma_f"]}
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
