"""A service for a benchmark, in a child process: built by ``create_server`` on 127.0.0.1:0.

The child writes the bound port as its first line on stdout, then serves until SIGTERM. A separate process
keeps the benchmark's own Python threads (clients, timers) off the server's interpreter lock.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
SERVICES = ("encoder", "perturb")


@contextlib.contextmanager
def serve(service: str, model: Path, flags: Sequence[str] = ()) -> Iterator[int]:
    """Run ``service`` on ``model`` with extra server ``flags`` (no auth, INFO logs off); yields its port."""
    if service not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, got {service!r}")
    command = [
        sys.executable, "-m", "benchmarks.serving", service, "--model", str(Path(model).resolve()),
        "--port", "0", "--bind-address", LOOPBACK, "--insecure-no-auth", "--log-level", "WARNING", *flags,
    ]
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"{service} server did not report its port (exit status {process.poll()})")
        yield int(line)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.serving {encoder,perturb} [server flags]``: serve, port first on stdout."""
    from services.common.config import EncoderConfig, PerturbConfig, parse_config
    from services.common.server import configure_logging, serve_until_signal

    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m benchmarks.serving {{{','.join(SERVICES)}}} [server flags, see SERVICE --help]"
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__}")
        return 0
    if not argv or argv[0] not in SERVICES:
        raise SystemExit(usage)
    service, flags = argv[0], argv[1:]
    config_class = EncoderConfig if service == "encoder" else PerturbConfig
    config = parse_config(config_class, flags, prog=f"python -m benchmarks.serving {service}")
    configure_logging(config.log_level)
    if service == "encoder":
        from services.encoder.server import create_server
    else:
        import torch

        from services.common.resources import compute_threads
        from services.perturb.server import create_server

        torch.set_num_threads(compute_threads(config.intra_op_threads))  # as ``python -m services.perturb``
    server, port = create_server(config)
    print(port, flush=True)
    serve_until_signal(server, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
