"""``--workers N``: N Feature-API processes behind one port (SO_REUSEPORT), supervised by this one.

One Python process serves one core at best: its event loop holds the interpreter lock for every call. The
parent reserves the port (binding it with SO_REUSEPORT but never listening, so the kernel hands it no
connections), starts N copies of ``python -m services.encoder`` on that port, and the kernel spreads incoming
connections over them. Each worker is a complete server: auth, quota, usage, health, reflection, tracing,
TLS, drain and the model pin.

- Threads: with ``--intra-op-threads 0`` each worker gets max(1, CPUs // N) ONNX Runtime threads, so
  workers × threads stays within the CPU quota.
- Quotas: each worker enforces ceil(quota / N) of every quota (``--quota-split N``), so the pod never grants
  more than a key's quota; a client whose calls all ride one connection reaches one worker and gets 1/N.
- Metrics: worker i serves /metrics on ``--metrics-port`` + i (or a free port each with 0).
- Signals: SIGTERM / SIGINT go to every worker, which drain; the parent exits when all have. A worker that
  dies on its own stops the others and the parent exits 1, so the orchestrator restarts the whole pod; a
  parent that dies (even by SIGKILL) takes its workers with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from services.common.config import EncoderConfig, to_argv
from services.common.resources import available_cpus

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(requested: int) -> int:
    """``requested`` workers, or one per CPU of the quota for 0."""
    return requested if requested > 0 else available_cpus()


def worker_configs(config: EncoderConfig, port: int) -> list[EncoderConfig]:
    """The configuration of each worker process of a ``--workers`` server bound to ``port``."""
    count = worker_count(config.workers)
    threads = config.intra_op_threads or max(1, available_cpus() // count)
    return [
        replace(
            config,
            port=port,
            workers=1,
            reuse_port=True,
            quota_split=count,
            intra_op_threads=threads,
            metrics_port=config.metrics_port + i if config.metrics_port > 0 else config.metrics_port,
        )
        for i in range(count)
    ]


def reserve_port(address: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``address:port`` with SO_REUSEPORT; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    return sock


def _die_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the parent dies (even by SIGKILL), so no worker is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the parent's SIGTERM forwarding still stops the workers
        pass


def serve_workers(config: EncoderConfig, on_port: Callable[[int], None] | None = None) -> int:
    """Start the workers, forward SIGTERM/SIGINT, wait for all to exit; the exit status (0 = drained).

    ``on_port(port)`` is called once every worker serves.
    """
    reservation = reserve_port(config.bind_address, config.port)
    port = reservation.getsockname()[1]
    configs = worker_configs(config, port)
    log.info("%d workers on %s:%d, %d intra-op threads each, quotas split %d ways",
             len(configs), config.bind_address, port, configs[0].intra_op_threads, len(configs))
    read_end, write_end = os.pipe()  # each worker writes one byte once it serves
    workers = [
        subprocess.Popen([sys.executable, "-m", "services.encoder", *to_argv(replace(c, ready_fd=write_end))],
                         pass_fds=(write_end,), preexec_fn=_die_with_parent)
        for c in configs
    ]
    os.close(write_end)
    stopping, status, ready = False, 0, 0

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while any(w.poll() is None for w in workers):
            if ready < len(workers) and select.select([read_end], [], [], 0.2)[0]:
                ready += len(os.read(read_end, len(workers)))
                if ready == len(workers):
                    log.info("all %d workers serving on port %d", len(workers), port)
                    if on_port is not None:
                        on_port(port)
            else:
                time.sleep(0.2)
            died = [w for w in workers if w.poll() is not None]
            if died and not stopping:
                log.error("worker %d exited with %d: stopping the others", died[0].pid, died[0].returncode)
                status = 1
                forward(signal.SIGTERM, None)
    finally:
        os.close(read_end)
        reservation.close()
    return status
