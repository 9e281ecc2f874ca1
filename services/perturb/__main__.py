"""``python -m services.perturb --model PATH --port N ...``: serve the F2IPerturb-API until SIGTERM."""

from __future__ import annotations

import sys

import torch

from services.common.config import PerturbConfig, parse_config
from services.common.resources import compute_threads
from services.common.server import configure_logging, serve_until_signal
from services.perturb.server import create_server


def main(argv: list[str] | None = None) -> int:
    """Parse flags (env-var fallbacks), size torch's thread pool to the CPU quota, serve until drained."""
    config = parse_config(
        PerturbConfig,
        argv,
        description="REaaS F2IPerturb-API (reaas.v1.Perturb)",
        prog="python -m services.perturb",
    )
    configure_logging(config.log_level)
    torch.set_num_threads(compute_threads(config.intra_op_threads))
    server, _port = create_server(config)
    serve_until_signal(server, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
