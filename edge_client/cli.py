"""Command line: ``python -m edge_client train|certify|predict`` (parses, then calls the library)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from edge_client.feature_cache import FeatureCache, fetch_features
from edge_client.journal import Journal, JournalError
from edge_client.metrics import summarize
from edge_client.mlp import MLP
from edge_client.runner import CERTIFY_METHODS, CertifyConfig, journal_header, run_certification
from edge_client.sdk import ClientConfig, ClientError, EncoderClient, ModelPin, PerturbClient
from edge_client.semantic import KINDS as SEMANTIC_KINDS
from edge_client.semantic import LEVELS as SEMANTIC_LEVELS
from edge_client.semantic import run_semantic, summarize_semantic
from edge_client.smoothing import ABSTAIN, SmoothingConfig, input_rng, predict_features
from edge_client.training import TrainConfig, noise_sigma, select_noise_scale, train_mlp
from reaas.methods import PERTURB_METHODS


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, argparse.SUPPRESS, False) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_connection(parser: argparse.ArgumentParser, perturb: bool) -> None:
    group = parser.add_argument_group("service connection")
    group.add_argument("--encoder", default="127.0.0.1:50051", help="Encoder (Feature-API) host:port")
    if perturb:
        group.add_argument("--perturb", default=None, help="Perturb host:port; default: --encoder")
    group.add_argument("--api-key-file", type=Path, default=None, help="file holding the API key")
    group.add_argument("--api-key-env", default="REAAS_API_KEY",
                       help="environment variable holding the API key (read when no --api-key-file)")
    group.add_argument("--tls", action="store_true", help="use TLS")
    group.add_argument("--root-cert", type=Path, default=None, help="PEM root certificates for TLS")
    group.add_argument("--timeout-s", type=float, default=120.0, help="deadline of each call attempt")
    group.add_argument("--expected-sha256", default=None, help="refuse any other served model")


def _add_data(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="fashion-mnist",
                       help="fashion-mnist | digits | cifar10 | svhn | stl10")
    group.add_argument("--data-root", default=None, help="directory of the dataset files")
    group.add_argument("--cache-dir", type=Path, default=Path(".cache/features"),
                       help="fetched-feature cache (re-training costs no queries)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(prog="python -m edge_client",
                                     description="REaaS edge client: train a downstream MLP on encoder "
                                                 "features and certify it (BC, SC, SEaaS baselines).",
                                     formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = _Formatter

    train = sub.add_parser("train", help="fetch training features (1 query each) and train the MLP",
                           formatter_class=fmt)
    _add_connection(train, perturb=False)
    _add_data(train)
    defaults = TrainConfig()
    train.add_argument("--num-train", type=int, default=0, help="first N training images (0 = all)")
    train.add_argument("--hidden", default=",".join(map(str, defaults.hidden_widths)), help="hidden widths")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.learning_rate)
    train.add_argument("--noise-c", type=float, default=defaults.noise_c,
                       help="feature noise sigma_F = c * S / sqrt(d); used when --select-noise-c is empty")
    train.add_argument("--select-noise-c", default="",
                       help="candidates for c (comma-separated), chosen on a validation split")
    train.add_argument("--validation-fraction", type=float, default=0.1)
    train.add_argument("--baseline", choices=["none", "seaas-sc", "seaas-ds"], default="none",
                       help="seaas-sc: k noisy copies per image (k queries); seaas-ds: + denoiser")
    train.add_argument("--image-sigma", type=float, default=0.25, help="SEaaS image-space noise, pixel units")
    train.add_argument("--copies", type=int, default=25, help="SEaaS-SC noisy copies per training input")
    train.add_argument("--denoiser-epochs", type=int, default=5)
    train.add_argument("--denoiser-out", type=Path, default=Path("denoiser.onnx"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("mlp.npz"), help="model .npz (+ <out>.json report)")

    certify = sub.add_parser("certify", help="certify a test subset (journaled, resumable)",
                             formatter_class=fmt)
    _add_connection(certify, perturb=True)
    _add_data(certify)
    cdefaults = CertifyConfig()
    certify.add_argument("--model", type=Path, required=True, help="MLP .npz written by `train`")
    certify.add_argument("--method", choices=CERTIFY_METHODS, default=cdefaults.method)
    certify.add_argument("--num-test", type=int, default=500, help="test subset prefix (index %% 20 == 0)")
    certify.add_argument("--noise-c", type=float, default=None, help="SC noise c; default: from training")
    certify.add_argument("--n0", type=int, default=cdefaults.n0)
    certify.add_argument("--n", type=int, default=cdefaults.n)
    certify.add_argument("--alpha", type=float, default=cdefaults.alpha)
    certify.add_argument("--seed", type=int, default=cdefaults.seed)
    certify.add_argument("--perturb-method", default=cdefaults.perturb_method,
                         choices=list(PERTURB_METHODS))
    certify.add_argument("--image-norm", choices=["l2", "linf"], default=cdefaults.image_norm)
    certify.add_argument("--clip-to-pixel-box", action="store_true")
    certify.add_argument("--image-sigma", type=float, default=cdefaults.image_sigma)
    certify.add_argument("--denoiser", type=Path, default=None, help="SEaaS-DS ONNX denoiser")
    certify.add_argument("--journal", type=Path, default=None, help="journal; default <model>.<method>.jsonl")
    certify.add_argument("--summary-out", type=Path, default=None, help="write the summary JSON here too")
    certify.add_argument("--semantic", default="",
                         help="also certify brightness and/or contrast ranges from each input's feature "
                              "radius (comma-separated: brightness,contrast; 1 F2ISemantic query each)")

    predict = sub.add_parser("predict", help="predict test inputs (plain MLP or smoothed PREDICT)",
                             formatter_class=fmt)
    _add_connection(predict, perturb=False)
    _add_data(predict)
    predict.add_argument("--model", type=Path, required=True)
    predict.add_argument("--indices", default="", help="test indices (comma-separated)")
    predict.add_argument("--num-test", type=int, default=20)
    predict.add_argument("--smoothed", action="store_true", help="Cohen PREDICT in feature space")
    predict.add_argument("--noise-c", type=float, default=None)
    predict.add_argument("--n", type=int, default=10_000)
    predict.add_argument("--alpha", type=float, default=0.001)
    predict.add_argument("--seed", type=int, default=0)
    return parser


def _api_key(args) -> str | None:
    if args.api_key_file is not None:
        return args.api_key_file.read_text().strip()
    return os.environ.get(args.api_key_env) or None


def _client_config(args, target: str) -> ClientConfig:
    return ClientConfig(target, api_key=_api_key(args), tls=args.tls,
                        root_certificates_pem=args.root_cert.read_bytes() if args.root_cert else None,
                        timeout_s=args.timeout_s, expected_model_sha256=args.expected_sha256)


def _load(args, split: str):
    from reaas.datasets import load_dataset

    return load_dataset(args.dataset, split, args.data_root)


def _test_indices(args, total: int) -> np.ndarray:
    from reaas.datasets import evaluation_subset_indices

    return evaluation_subset_indices(args.num_test, total=total)


def _report_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="input", file=sys.stderr, dynamic_ncols=True)


def cmd_train(args) -> dict:
    """Fetch features (cached), choose c on validation, train, save the model and its report."""
    from tqdm import tqdm

    images, labels = _load(args, "train")
    if args.num_train:
        images, labels = images[:args.num_train], labels[:args.num_train]
    indices = np.arange(len(labels))
    hidden = tuple(int(w) for w in args.hidden.split(",") if w)
    config = TrainConfig(hidden_widths=hidden, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.lr, noise_c=args.noise_c, seed=args.seed)
    cache = FeatureCache(args.cache_dir)
    with EncoderClient(_client_config(args, args.encoder)) as encoder:
        print(f"encoder {encoder.model_info().model_name} sha256 {encoder.pin.sha256[:12]}…", file=sys.stderr)
        if args.baseline == "seaas-sc":
            from edge_client.feature_cache import CacheKey
            from edge_client.seaas_baselines import fetch_noisy_training_features

            # one row per noisy copy, image-major: each index repeated `copies` times
            rows = tuple(np.repeat(indices, args.copies).tolist())
            key = CacheKey(args.dataset, "train", rows, encoder.pin.sha256,
                           f"noisy-sigma{args.image_sigma:g}-k{args.copies}-seed{args.seed}")
            rng = np.random.default_rng(args.seed)
            features, cached = cache.get_or_fetch(
                key, lambda: fetch_noisy_training_features(encoder, images, labels, args.image_sigma,
                                                           args.copies, rng)[0])
            labels = np.repeat(labels, args.copies)
            config = TrainConfig(**{**asdict(config), "noise_c": 0.0})
        else:
            features, cached = fetch_features(encoder, cache, args.dataset, "train", indices, images)
        usage = encoder.usage
    table: list[dict] = []
    if args.select_noise_c and args.baseline == "none":
        candidates = [float(c) for c in args.select_noise_c.split(",")]
        best, table = select_noise_scale(features, labels, candidates, config, args.validation_fraction)
        config = TrainConfig(**{**asdict(config), "noise_c": best})
        print(f"chose noise c = {best:g} on the validation split: {table}", file=sys.stderr)
    elif args.baseline == "seaas-ds":
        config = TrainConfig(**{**asdict(config), "noise_c": 0.0})
    bar = tqdm(total=config.epochs, desc="train MLP", unit="epoch", file=sys.stderr)

    def progress(epoch: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)

    model = train_mlp(features, labels, config, num_classes=int(labels.max() + 1), progress=progress)
    bar.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    report = {"train_config": asdict(config), "noise_c": config.noise_c, "dataset": args.dataset,
              "num_train": int(len(indices)), "feature_spread": model.spread,
              "feature_dim": model.feature_dim,
              "sigma_F": noise_sigma(model.spread, model.feature_dim, config.noise_c),
              "model_sha256": encoder.pin.sha256, "baseline": args.baseline, "features_cached": bool(cached),
              "training_queries": 0 if cached else usage.queries,
              "training_bytes": 0 if cached else usage.bytes, "noise_c_table": table,
              "image_sigma": args.image_sigma if args.baseline != "none" else None,
              "copies": args.copies if args.baseline == "seaas-sc" else None}
    if args.baseline == "seaas-ds":
        from edge_client.seaas_baselines import DenoiserConfig, export_denoiser_onnx, train_denoiser

        dconfig = DenoiserConfig(sigma=args.image_sigma, epochs=args.denoiser_epochs, seed=args.seed)
        denoiser = train_denoiser(images, dconfig, progress=lambda p, e, loss: print(
            f"denoiser {p} epoch {e}: {loss:.5f}", file=sys.stderr))
        export_denoiser_onnx(denoiser, args.denoiser_out, tuple(images.shape[1:]))
        report["denoiser"] = str(args.denoiser_out)
    _report_path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("noise_c", "sigma_F", "training_queries", "training_bytes",
                                             "features_cached")}))
    return report


def cmd_certify(args) -> dict:
    """Certify the test subset with one method, journaled; prints and returns the summary."""
    kinds = [k.strip() for k in args.semantic.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SEMANTIC_KINDS))
    if unknown:
        raise SystemExit(f"--semantic: unknown kind(s) {unknown}; choose from {', '.join(SEMANTIC_KINDS)}")
    if kinds and args.method.startswith("seaas"):
        raise SystemExit("--semantic needs a feature radius: use it with bc-crown, bc-ibp, sc or sc-curve")
    model = MLP.load(args.model)
    report_path = _report_path(args.model)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    noise_c = args.noise_c if args.noise_c is not None else report.get("noise_c")
    if args.method in ("sc", "sc-curve") and noise_c is None:
        raise SystemExit(f"--noise-c is required: no training report at {report_path}")
    images, labels = _load(args, "test")
    indices = _test_indices(args, len(labels))
    names = {f.name for f in fields(CertifyConfig)}
    config = CertifyConfig(**{k: v for k, v in {
        "method": args.method, "noise_c": float(noise_c or 0.0), "n0": args.n0, "n": args.n,
        "alpha": args.alpha,
        "seed": args.seed, "perturb_method": args.perturb_method, "image_norm": args.image_norm,
        "clip_to_pixel_box": args.clip_to_pixel_box, "image_sigma": args.image_sigma,
        "denoiser_path": str(args.denoiser or report.get("denoiser") or "")}.items() if k in names})
    pin = ModelPin()
    with EncoderClient(_client_config(args, args.encoder), pin=pin) as encoder, \
            PerturbClient(_client_config(args, args.perturb or args.encoder), pin=pin) as perturb:
        sha = encoder.model_info().model_sha256
        if args.method not in ("seaas-sc", "seaas-ds"):
            perturb.model_info()
        if report.get("model_sha256") and report["model_sha256"] != sha:
            raise SystemExit(f"the model was trained on features of encoder {report['model_sha256'][:12]}…, "
                             f"but the service now serves {sha[:12]}…")
        journal_path = args.journal or args.model.with_name(f"{args.model.stem}.{args.method}.jsonl")
        header = journal_header(config, sha, _sha256_file(args.model), args.dataset)
        journal = Journal(journal_path, header)
        bar = _progress(len(indices), f"certify {args.method}")
        bar.update(len(journal.done & set(int(i) for i in indices)))
        rows = run_certification(journal, indices, images[indices], labels[indices], model, encoder, perturb,
                                 config, on_row=lambda row: bar.update(1))
        bar.close()
        semantic = _certify_semantic(args, kinds, rows, images, journal_path, header, perturb)
    summary = summarize(rows, training_inputs=report.get("num_train", 0),
                        training_queries=report.get("training_queries", 0),
                        training_bytes=report.get("training_bytes", 0))
    summary.update({"method": args.method, "journal": str(journal_path), "model_sha256": sha,
                    "noise_c": config.noise_c, "seed": config.seed, "n": config.n, "alpha": config.alpha})
    if semantic:
        summary["semantic"] = semantic
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary_out:
        args.summary_out.parent.mkdir(parents=True, exist_ok=True)
        args.summary_out.write_text(text)
    return summary


def _certify_semantic(args, kinds: list[str], rows: list[dict], images: np.ndarray, journal_path: Path,
                      header: dict, perturb: PerturbClient) -> dict:
    """Certified brightness / contrast ranges of the certified rows, one journal per kind; summaries."""
    out = {}
    by_index = {int(r["index"]): images[int(r["index"])] for r in rows}
    for kind in kinds:
        journal = Journal(journal_path.with_name(f"{journal_path.stem}.semantic-{kind}.jsonl"),
                          {**header, "semantic": kind})
        bar = _progress(len(rows), f"certify {kind}")
        bar.update(len(journal.done & set(by_index)))
        semantic_rows = run_semantic(journal, rows, by_index, perturb, kind,
                                     l2_unclipped=not args.clip_to_pixel_box,
                                     on_row=lambda row, bar=bar: bar.update(1))
        bar.close()
        out[kind] = summarize_semantic(semantic_rows, SEMANTIC_LEVELS[kind])
    return out


def cmd_predict(args) -> list[dict]:
    """Predict test inputs with the MLP (or the smoothed classifier); prints one JSON line each."""
    model = MLP.load(args.model)
    report_path = _report_path(args.model)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    images, labels = _load(args, "test")
    if args.indices:
        indices = np.array([int(i) for i in args.indices.split(",")], dtype=np.int64)
    else:
        indices = _test_indices(args, len(labels))
    with EncoderClient(_client_config(args, args.encoder)) as encoder:
        features = encoder.encode(images[indices])
    out = []
    for k, index in enumerate(indices):
        row = {"index": int(index), "label": int(labels[index]),
               "prediction": int(model.predict(features[k:k + 1])[0])}
        if args.smoothed:
            c = args.noise_c if args.noise_c is not None else report.get("noise_c", 1.0)
            config = SmoothingConfig(sigma=noise_sigma(model.spread, model.feature_dim, c), n=args.n,
                                     alpha=args.alpha)
            smoothed = predict_features(model, features[k], config, input_rng(args.seed, int(index)))
            row["smoothed_prediction"] = None if smoothed == ABSTAIN else smoothed
        print(json.dumps(row))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        {"train": cmd_train, "certify": cmd_certify, "predict": cmd_predict}[args.command](args)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (JournalError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the journal", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
