"""Client-side cost of one certificate: ``python -m edge_client.bench --json``.

Measures REaaS-SC (Cohen CERTIFY in feature space, n = 100,000) and REaaS-BC (CROWN bisection) for one
input on an MLP with 128-d features and two hidden layers of 256, pinned to one core, in a fresh child
process so ``sc_peak_rss_mb`` is the peak resident memory of a process that only does this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _measure(args: argparse.Namespace) -> dict:
    """Runs in the child: build the MLP, time SC (and BC) certificates, read the peak RSS."""
    import resource
    import time

    import numpy as np

    from edge_client.base_certify import BCConfig, certify_feature_radius
    from edge_client.mlp import init_mlp
    from edge_client.smoothing import SmoothingConfig, certify_features, input_rng

    rng = np.random.default_rng(args.seed)
    d = args.feature_dim
    mlp = init_mlp(d, (args.width, args.width), 10, np.zeros(d), 1.0, rng)
    features = rng.standard_normal((args.inputs, d)) / np.sqrt(d)
    config = SmoothingConfig(sigma=args.noise_c / np.sqrt(d), n0=100, n=args.n, alpha=0.001)
    certify_features(mlp, features[0], config, input_rng(args.seed, 10_000))  # warm-up
    times, cpu_times = [], []
    for i in range(args.inputs):
        start, cpu_start = time.perf_counter(), time.process_time()
        certify_features(mlp, features[i], config, input_rng(args.seed, i))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    sc_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    bc_times = []
    for i in range(min(args.inputs, 3)):
        start = time.perf_counter()
        certify_feature_radius(mlp, features[i:i + 1], BCConfig(method="crown"))
        bc_times.append(time.perf_counter() - start)
    return {"sc_seconds_per_input": float(np.median(times)), "sc_seconds_min": float(np.min(times)),
            "sc_seconds_max": float(np.max(times)), "sc_cpu_seconds_per_input": float(np.median(cpu_times)),
            "sc_peak_rss_mb": sc_rss,
            "bc_crown_seconds_per_input": float(np.median(bc_times)), "n": args.n, "n0": 100,
            "feature_dim": d, "hidden_widths": [args.width, args.width], "inputs": args.inputs,
            "threads": int(os.environ.get("OPENBLAS_NUM_THREADS", "0") or 0),
            "goals": {"sc_seconds_per_input": 0.3, "sc_peak_rss_mb": 150}}


def main(argv: list[str] | None = None) -> int:
    """Parse, run the measurement in a child pinned to ``--threads`` BLAS threads, print the result."""
    parser = argparse.ArgumentParser(prog="python -m edge_client.bench", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--n", type=int, default=100_000, help="smoothing samples")
    parser.add_argument("--feature-dim", type=int, default=128, help="feature dimension")
    parser.add_argument("--width", type=int, default=256, help="hidden width (two layers)")
    parser.add_argument("--noise-c", type=float, default=1.0, help="sigma_F = c * S / sqrt(d), S = 1")
    parser.add_argument("--inputs", type=int, default=5, help="certificates timed (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (the goal is for one core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _measure(args)
    else:
        env = dict(os.environ, **{var: str(args.threads) for var in _THREAD_VARS})
        child = [sys.executable, "-m", "edge_client.bench", "--child", "--json", "--n", str(args.n),
                 "--feature-dim", str(args.feature_dim), "--width", str(args.width), "--noise-c",
                 str(args.noise_c), "--inputs", str(args.inputs), "--seed", str(args.seed)]
        proc = subprocess.run(child, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        result = json.loads(proc.stdout)
    if args.json or args.child:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
