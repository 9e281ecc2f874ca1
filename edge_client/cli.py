"""Command line: ``python -m edge_client train|certify|predict``; parses, then calls the workflow."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from edge_client.certification import CERTIFY_METHODS, CertifyConfig
from edge_client.journal import JournalError
from edge_client.sdk import ClientConfig, ClientError
from edge_client.semantic import KINDS as SEMANTIC_KINDS
from edge_client.training import TrainConfig
from edge_client.workflow import (
    BASELINES,
    Downstream,
    DownstreamConfig,
    certify_images,
    certify_semantic,
    certify_subset,
    connect,
    evaluation_subset,
    predict_images,
    train_denoiser_onnx,
    train_downstream,
)
from reaas.datasets import DatasetError, DataSource
from reaas.methods import PERTURB_METHODS

SUBSET = "the evaluation subset, test indices ≡ 0 mod 20 (0, 20, 40, …; 500 of Fashion-MNIST's 10,000)"


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
    defaults, downstream = TrainConfig(), DownstreamConfig()
    train.add_argument("--num-train", type=int, default=0, help="first N training images (0 = all)")
    train.add_argument("--hidden", default=",".join(map(str, defaults.hidden_widths)), help="hidden widths")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.learning_rate)
    train.add_argument("--noise-c", type=float, default=defaults.noise_c,
                       help="feature noise sigma_F = c * S / sqrt(d); used when --select-noise-c is empty")
    train.add_argument("--select-noise-c", default="",
                       help="candidates for c (comma-separated), chosen on a validation split")
    train.add_argument("--selection-images", type=int, default=downstream.selection_images,
                       help="training features c is chosen on (validation carved from them)")
    train.add_argument("--validation-fraction", type=float, default=downstream.validation_fraction)
    train.add_argument("--baseline", choices=BASELINES, default=downstream.baseline,
                       help="seaas-sc: k noisy copies per image (k queries); seaas-ds: + denoiser")
    train.add_argument("--image-sigma", type=float, default=downstream.image_sigma,
                       help="SEaaS image-space noise, pixel units")
    train.add_argument("--copies", type=int, default=downstream.copies,
                       help="SEaaS-SC noisy copies per training input")
    train.add_argument("--denoiser-epochs", type=int, default=5)
    train.add_argument("--denoiser-out", type=Path, default=Path("denoiser.onnx"))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("mlp.npz"), help="model .npz (+ <out>.json report)")

    certify = sub.add_parser("certify", help=f"certify {SUBSET} (journaled, resumable), or your own images",
                             formatter_class=fmt)
    _add_connection(certify, perturb=True)
    _add_data(certify)
    cdefaults = CertifyConfig()
    certify.add_argument("--model", type=Path, required=True, help="MLP .npz written by `train`")
    certify.add_argument("--images", type=Path, default=None,
                         help="certify these images instead of the test subset: a .npy array ([N, C, H, W] "
                              "uint8, or floats in [0, 1]) or a folder of PNG / JPEG files; prints one row "
                              "per image (file, label, certified radius or abstain)")
    certify.add_argument("--method", choices=CERTIFY_METHODS, default=cdefaults.method)
    certify.add_argument("--num-test", type=int, default=500, help=f"first N inputs of {SUBSET}")
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
    certify.add_argument("--journal", type=Path, default=None,
                         help="journal .jsonl (or a directory: one file per configuration); "
                              "default <model>.<method>.jsonl")
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
    predict.add_argument("--num-test", type=int, default=20, help=f"first N inputs of {SUBSET}")
    predict.add_argument("--smoothed", action="store_true", help="Cohen PREDICT in feature space")
    predict.add_argument("--noise-c", type=float, default=None, help="default: from training")
    predict.add_argument("--n", type=int, default=10_000)
    predict.add_argument("--alpha", type=float, default=0.001)
    predict.add_argument("--seed", type=int, default=0)
    return parser


def _client_config(args, target: str) -> ClientConfig:
    if args.api_key_file is not None:
        api_key = args.api_key_file.read_text().strip()
    else:
        api_key = os.environ.get(args.api_key_env) or None
    return ClientConfig(target, api_key=api_key, tls=args.tls,
                        root_certificates_pem=args.root_cert.read_bytes() if args.root_cert else None,
                        timeout_s=args.timeout_s, expected_model_sha256=args.expected_sha256)


def _connect(args):
    perturb = getattr(args, "perturb", None) or args.encoder
    return connect(_client_config(args, args.encoder), _client_config(args, perturb))


def _model(args) -> Downstream:
    """The trained model of --model, with --noise-c in place of the trained one where given."""
    downstream = Downstream.load(args.model)
    return downstream if args.noise_c is None else replace(downstream, noise_c=args.noise_c)


def _progress(total: int, desc: str, unit: str = "input"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _log(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_train(args) -> dict:
    """Fetch features (cached), choose c on validation, train, save the model and its report."""
    data = DataSource(args.dataset, args.data_root)
    images, labels = data.load("train")
    if args.num_train:
        images, labels = images[:args.num_train], labels[:args.num_train]
    grid = tuple(float(c) for c in args.select_noise_c.split(",") if c.strip()) or (args.noise_c,)
    config = DownstreamConfig(
        baseline=args.baseline, noise_c_grid=grid, selection_images=args.selection_images,
        validation_fraction=args.validation_fraction, image_sigma=args.image_sigma, copies=args.copies,
        train=TrainConfig(hidden_widths=tuple(int(w) for w in args.hidden.split(",") if w),
                          epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                          seed=args.seed))
    encoder, perturb = _connect(args)
    with encoder, perturb, _progress(config.train.epochs, "train MLP", "epoch") as bar:
        _log(f"encoder {encoder.model_info().model_name} sha256 {encoder.pin.sha256[:12]}…")
        downstream = train_downstream(encoder, images, labels, config, cache_dir=args.cache_dir,
                                      dataset=data.name,
                                      progress=lambda epoch, loss: (bar.set_postfix(loss=f"{loss:.4f}"),
                                                                    bar.update(1)))
    if downstream.selection_table:
        _log(f"chose noise c = {downstream.noise_c:g} on the validation split: {downstream.selection_table}")
    if args.baseline == "seaas-ds":
        from edge_client.seaas_baselines import DenoiserConfig

        dconfig = DenoiserConfig(sigma=args.image_sigma, epochs=args.denoiser_epochs, seed=args.seed)
        train_denoiser_onnx(images, dconfig, args.denoiser_out,
                            progress=lambda p, e, loss: _log(f"denoiser {p} epoch {e}: {loss:.5f}"))
        downstream = replace(downstream, denoiser=str(args.denoiser_out))
    downstream.save(args.out, dataset=data.name, train_config=asdict(config.train),
                    image_sigma=args.image_sigma if args.baseline != "reaas" else None,
                    copies=args.copies if args.baseline == "seaas-sc" else None)
    shown = {"noise_c": downstream.noise_c, "sigma_F": downstream.sigma_f,
             "training_queries": downstream.training_queries, "training_bytes": downstream.training_bytes,
             "features_cached": downstream.features_cached}
    print(json.dumps(shown))
    return shown


def _semantic_kinds(args) -> list[str]:
    kinds = [k.strip() for k in args.semantic.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SEMANTIC_KINDS))
    if unknown:
        raise SystemExit(f"--semantic: unknown kind(s) {unknown}; choose from {', '.join(SEMANTIC_KINDS)}")
    if kinds and args.method.startswith("seaas"):
        raise SystemExit("--semantic needs a feature radius: use it with bc-crown, bc-ibp, sc or sc-curve")
    if kinds and args.images is not None:
        raise SystemExit("--semantic certifies the test subset: leave out --images")
    return kinds


def cmd_certify(args) -> dict | list[dict]:
    """Certify the test subset with one method, journaled (prints the summary), or --images (one row each)."""
    kinds = _semantic_kinds(args)
    downstream = _model(args)
    config = CertifyConfig(method=args.method, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                           perturb_method=args.perturb_method, image_norm=args.image_norm,
                           clip_to_pixel_box=args.clip_to_pixel_box, image_sigma=args.image_sigma,
                           denoiser_path=str(args.denoiser or ""))
    encoder, perturb = _connect(args)
    with encoder, perturb:
        if args.images is not None:
            return _certify_images(args, downstream, config, encoder, perturb)
        subset = evaluation_subset(DataSource(args.dataset, args.data_root), args.num_test)
        journal = args.journal or args.model.with_name(f"{args.model.stem}.{args.method}.jsonl")
        with _progress(len(subset.indices), f"certify {args.method}") as bar:
            certified = certify_subset(downstream, subset, encoder, perturb, config, journal,
                                       dataset=args.dataset, on_row=lambda row: bar.update(1))
            bar.update(bar.total - bar.n)
        images = dict(zip((int(i) for i in subset.indices), subset.images, strict=True))
        semantic = {}
        for kind in kinds:
            with _progress(len(certified.rows), f"certify {kind}") as bar:
                semantic[kind] = certify_semantic(certified.rows, images, perturb, kind,
                                                  certified.journal.parent,
                                                  l2_unclipped=not args.clip_to_pixel_box,
                                                  on_row=lambda row, bar=bar: bar.update(1)).summary
    summary = {**certified.summary, "method": args.method, "journal": str(certified.journal),
               "model_sha256": encoder.pin.sha256, "noise_c": downstream.noise_c, "seed": config.seed,
               "n": config.n, "alpha": config.alpha}
    if semantic:
        summary["semantic"] = semantic
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary_out:
        args.summary_out.parent.mkdir(parents=True, exist_ok=True)
        args.summary_out.write_text(text)
    return summary


def _certify_images(args, downstream: Downstream, config: CertifyConfig, encoder, perturb) -> list[dict]:
    """Certify the images of --images; prints a tab-separated row per image: file, label, radius."""
    from edge_client.images import read_images

    shape = tuple(int(v) for v in encoder.model_info().input_shape)
    names, images = read_images(args.images, shape)
    certificates = certify_images(downstream, images, encoder, perturb, config)
    print(f"image\tlabel\tradius_{config.image_norm}")
    rows = []
    for name, certificate in zip(names, certificates, strict=True):
        abstained = certificate.label is None
        print(f"{name}\t{'abstain' if abstained else certificate.label}\t"
              f"{'-' if abstained else f'{certificate.radius:.6g}'}")
        rows.append({"image": name, **asdict(certificate)})
    return rows


def cmd_predict(args) -> list[dict]:
    """Predict test inputs with the MLP (or the smoothed classifier); prints one JSON line each."""
    downstream = _model(args)
    images, labels = DataSource(args.dataset, args.data_root).load("test")
    if args.indices:
        indices = [int(i) for i in args.indices.split(",")]
    else:
        indices = [int(i) for i in evaluation_subset(DataSource(args.dataset, args.data_root),
                                                     args.num_test).indices]
    encoder, perturb = _connect(args)
    with encoder, perturb:
        predictions, smoothed = predict_images(downstream, images[indices], encoder,
                                               smoothed_n=args.n if args.smoothed else 0, alpha=args.alpha,
                                               seed=args.seed, indices=indices)
    out = []
    for k, index in enumerate(indices):
        row = {"index": index, "label": int(labels[index]), "prediction": int(predictions[k])}
        if smoothed is not None:
            row["smoothed_prediction"] = None if smoothed[k] < 0 else int(smoothed[k])
        print(json.dumps(row))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        {"train": cmd_train, "certify": cmd_certify, "predict": cmd_predict}[args.command](args)
    except (ClientError, JournalError, DatasetError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the journal", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
