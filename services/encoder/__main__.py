"""``python -m services.encoder --model PATH [--workers N] ...``: serve the Feature-API until SIGTERM."""

from __future__ import annotations

import sys

from services.common.config import EncoderConfig, parse_config
from services.common.server import configure_logging, serve_until_signal
from services.encoder.server import create_server
from services.encoder.workers import serve_workers, worker_count


def main(argv: list[str] | None = None) -> int:
    """Parse flags (env-var fallbacks); serve in this process, or in --workers processes, until drained."""
    config = parse_config(
        EncoderConfig,
        argv,
        description="REaaS Feature-API (reaas.v1.Encoder + KServe v2)",
        prog="python -m services.encoder",
    )
    configure_logging(config.log_level)
    if worker_count(config.workers) > 1:
        return serve_workers(config)
    server, _port = create_server(config)
    serve_until_signal(server, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
