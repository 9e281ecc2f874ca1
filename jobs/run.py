"""``make run``: the main job on the embedded default, end to end over real gRPC on loopback.

Starts the encoder and perturb services on the shipped robust encoder with a fresh API key; the edge client
fetches Fashion-MNIST training features (1 query each, cached), chooses its smoothing noise on a validation
split, trains its MLP, certifies the fixed test subset (test indices ≡ 0 mod 20) with REaaS-BC and REaaS-SC
(2 queries per test input), prints a table and writes ``results/run.json`` and ``results/run.png``. The
services are stopped on success, failure and Ctrl-C. Re-running resumes from the journals without repeating
queries. The client's side is ``edge_client.workflow``; this module parses flags and reports.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from edge_client.certification import CertifyConfig
from edge_client.metrics import DEFAULT_RADII
from edge_client.training import TrainConfig
from edge_client.workflow import DownstreamConfig, certify_subset, evaluation_subset, train_downstream
from jobs import report, steps
from jobs.entry import interrupt_on_sigterm, run_script
from reaas.datasets import LOADERS, DataSource
from reaas.methods import PERTURB_METHODS

LABELS = {"bc-crown": "REaaS-BC (CROWN)", "bc-ibp": "REaaS-BC (IBP)", "sc": "REaaS-SC",
          "sc-curve": "REaaS-SC one-query"}
COLUMNS = ["pipeline", "queries_per_train_input", "queries_per_test_input", "bytes_per_test_input",
           "clean_accuracy", *(report.radius_key(r) for r in DEFAULT_RADII if r > 0), "acr"]


def build_parser() -> argparse.ArgumentParser:
    """Flags of the main job; every default is shown by --help."""
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/fmnist-robust.onnx"),
                        help="encoder to serve")
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(LOADERS),
                        help="the encoder must take its images (pre-train one: services.trainer --dataset)")
    parser.add_argument("--data-root", default=None, help="directory of the dataset's files (your own copy)")
    parser.add_argument("--num-test", type=int, default=500,
                        help="test inputs: the first N of the evaluation subset, test indices ≡ 0 mod 20 "
                             "(0, 20, 40, …)")
    parser.add_argument("--num-train", type=int, default=60_000, help="training inputs (1 query each)")
    parser.add_argument("--methods", default="bc-crown,sc",
                        help=f"comma-separated, from {', '.join(LABELS)}")
    parser.add_argument("--noise-c", default="0.5,1,2",
                        help="candidate c for sigma_F = c*S/sqrt(d), chosen on a validation split")
    parser.add_argument("--epochs", type=int, default=20, help="MLP training epochs")
    parser.add_argument("--n0", type=int, default=100, help="smoothing: samples to guess the class")
    parser.add_argument("--n", type=int, default=100_000, help="smoothing: samples to certify")
    parser.add_argument("--alpha", type=float, default=0.001, help="smoothing: failure probability")
    parser.add_argument("--perturb-method", default="auto",
                        choices=list(PERTURB_METHODS), help="F2IPerturb bound")
    parser.add_argument("--perturb-timeout-s", type=float, default=20.0,
                        help="deadline of each call; AUTO uses what it leaves (full CROWN needs >= 60 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and smoothing noise")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where run.json / run.png go")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/features"), help="feature cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(LABELS)}")
    if not args.model.is_file():
        raise SystemExit(f"model {args.model} not found (shipped in models/, or `make pretrain`)")
    interrupt_on_sigterm()
    started = time.perf_counter()
    downstream_config = DownstreamConfig(noise_c_grid=tuple(float(c) for c in args.noise_c.split(",")),
                                         train=TrainConfig(epochs=args.epochs, seed=args.seed))
    base = CertifyConfig(n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                         perturb_method=args.perturb_method)
    data = DataSource(args.dataset, args.data_root)
    subset = evaluation_subset(data, args.num_test)
    run_dir = steps.scratch_dir("reaas-run-")
    results: dict = {}
    print(f"starting services for {args.model} (run dir {run_dir})", flush=True)
    with steps.local_services(args.model, run_dir) as endpoints:
        encoder, perturb = steps.connect_local(endpoints, timeout_s=args.perturb_timeout_s)
        steps.check_input_shape(encoder, data)
        images, labels = steps.training_images(data, args.num_train)
        with tqdm(total=downstream_config.train.epochs, desc="training MLP", unit="epoch") as bar:
            downstream = train_downstream(encoder, images, labels, downstream_config,
                                          cache_dir=args.cache_dir, dataset=data.name,
                                          progress=lambda epoch, loss: bar.update(1))
        print(f"training: {downstream.training_inputs} inputs, {downstream.training_queries} queries "
              f"(also when cached), noise c = {downstream.noise_c:g}, sigma_F = {downstream.sigma_f:.4g}")
        for method in methods:
            with tqdm(total=len(subset.indices), desc=LABELS[method], unit="input") as bar:
                results[method] = certify_subset(downstream, subset, encoder, perturb,
                                                 replace(base, method=method), args.out / "journals",
                                                 dataset=data.name, on_row=lambda row: bar.update(1))
                bar.update(bar.total - bar.n)
    table_rows = [_table_row(LABELS[m], results[m].summary) for m in methods]
    print()
    print(report.markdown_table(table_rows, COLUMNS))
    payload = {"model": str(args.model), "model_sha256": endpoints["model_sha256"],
               "config": {**vars(args), "model": str(args.model), "out": str(args.out),
                          "cache_dir": str(args.cache_dir), "certify": asdict(replace(base))},
               "noise_c": downstream.noise_c, "sigma_f": downstream.sigma_f,
               "noise_c_selection": downstream.selection_table, "table": table_rows,
               "methods": {m: results[m].summary for m in methods},
               "wall_seconds": time.perf_counter() - started}
    report.write_json(args.out / "run.json", payload)
    curves = {LABELS[m]: steps.rows_to_curve(results[m].rows) for m in methods}
    title = f"REaaS on {args.dataset} ({args.model.stem}, {len(subset.indices)} test inputs)"
    report.plot_certified_accuracy(curves, args.out / "run.png", title)
    print(f"\nwrote {args.out / 'run.json'} and {args.out / 'run.png'} in {payload['wall_seconds']:.0f} s")
    return 0


def _table_row(label: str, summary: dict) -> dict:
    """Flatten an edge_client summary into the table's columns."""
    row = {"pipeline": label, **{k: v for k, v in summary.items() if not isinstance(v, dict)}}
    for radius, value in summary["certified_accuracy"].items():
        row[report.radius_key(float(radius))] = value
    row["queries_per_train_input"] = summary["queries_per_training_input"]
    return row


if __name__ == "__main__":
    run_script(main)
