"""Serve the fake linear Encoder + Perturb services standalone (for trying the CLI by hand).

    .venv/bin/python tests/edge_client/serve_fake.py --port 50151 --input-shape 1,28,28 --feature-dim 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]

from edge_fakes import create_fake_server, linear_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--input-shape", default="1,28,28")
    parser.add_argument("--feature-dim", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.input_shape.split(","))
    state = linear_state(feature_dim=args.feature_dim, input_shape=shape, seed=args.seed,
                         max_batch_size=args.max_batch_size)
    server, port = create_fake_server(state, port=args.port)
    print(f"fake services on 127.0.0.1:{port} (sigma_max(W) = {state.sigma_max:.4f})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(1.0)


if __name__ == "__main__":
    main()
