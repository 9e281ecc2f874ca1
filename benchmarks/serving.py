"""A service for a benchmark, in a child process: built by ``create_server`` on 127.0.0.1:0.

The child writes the bound port as its first line on stdout, then serves until SIGTERM. A separate process
keeps the benchmark's own Python threads (clients, timers) off the server's interpreter lock.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
SERVICES = ("encoder", "perturb")
REPO = Path(__file__).resolve().parents[1]
TRITON_VENV_PYTHON = REPO / ".venv-triton" / "bin" / "python"  # what `make bench-triton` builds


class PeerUnavailable(RuntimeError):
    """The Triton peer cannot run here (no interpreter with nvidia-pytriton); the message says how to fix."""


def check_peer_python(python: Path) -> dict[str, str]:
    """The environment that runs PyTriton under ``python``; raises PeerUnavailable when it cannot import it.

    Triton's Python backend stub links the interpreter's libpython, so its directory goes on the loader path.
    """
    python = Path(python)
    hint = "run `make bench-triton` (builds .venv-triton with a Python 3.12) or pass --peer-python"
    if not python.exists():
        raise PeerUnavailable(f"no peer interpreter at {python}: {hint}")
    probe = subprocess.run(
        [str(python), "-c",
         "import sysconfig, pytriton, onnxruntime; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        raise PeerUnavailable(f"{python} cannot import pytriton/onnxruntime ({probe.stderr.strip()[-300:]}): "
                              f"{hint}")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [probe.stdout.strip(), env.get("LD_LIBRARY_PATH")]))
    return env


@contextlib.contextmanager
def serve_triton_peer(model: Path, python: Path, flags: Sequence[str] = (), timeout_s: float = 180.0
                      ) -> Iterator[int]:
    """Serve ``model`` with PyTriton (benchmarks/triton_peer.py) under ``python``; yields its gRPC port."""
    env = check_peer_python(python)
    script = REPO / "benchmarks" / "triton_peer.py"
    command = [str(python), str(script), "--model", str(Path(model).resolve()), *flags]
    # its own process group: PyTriton starts tritonserver and a backend stub, which must not outlive the peer
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                               cwd=REPO, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # reads the whole log, so a full pipe never blocks the server
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:  # Triton logs to stdout as well; the peer's own line is "grpc-port N"
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise PeerUnavailable(f"the Triton peer did not report its port within {timeout_s:.0f} s"
                                      ) from None
            if line is None:
                raise PeerUnavailable(f"the Triton peer exited without serving (status {process.wait()})")
            if line.startswith("grpc-port "):
                yield int(line.split()[1])
                break
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process, then SIGKILL its whole group (its children included) once it exited or after
    ``grace_s``."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def serve(service: str, model: Path, flags: Sequence[str] = ()) -> Iterator[int]:
    """Run ``service`` on ``model`` with extra server ``flags`` (no auth, INFO logs off); yields its port."""
    if service not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, got {service!r}")
    command = [
        sys.executable, "-m", "benchmarks.serving", service, "--model", str(Path(model).resolve()),
        "--port", "0", "--bind-address", LOOPBACK, "--insecure-no-auth", "--log-level", "WARNING", *flags,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
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
        from services.encoder.workers import serve_workers, worker_count

        if worker_count(config.workers) > 1:
            return serve_workers(config, on_port=lambda port: print(port, flush=True))
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
