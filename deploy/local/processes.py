"""Start, identify and stop detached server processes recorded in pid files (Linux /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# Set in every child's environment: a pid is only ours if its environment carries our run directory.
RUN_DIR_ENV = "REAAS_LOCAL_RUN_DIR"


def spawn(argv: Sequence[str], *, log_path: Path, pid_path: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Start ``argv`` in its own session (it outlives the caller), output appended to ``log_path``; pid."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(env), cwd=cwd, start_new_session=True)
    pid_path.write_text(f"{process.pid}\n")
    return process.pid


def read_pid(pid_path: Path) -> int | None:
    """The pid in ``pid_path``, or None when the file is missing or garbled."""
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def _state(pid: int) -> str | None:
    """The process state letter from /proc (None when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    _reap(pid)
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def is_ours(pid: int, run_dir: Path, module: str) -> bool:
    """True when ``pid`` runs ``python -m module`` started for ``run_dir`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if module.encode() not in cmdline:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # not readable: the module name has to do
        return True
    return f"{RUN_DIR_ENV}={run_dir}".encode() in environ


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _signal(pid: int, signum: int) -> None:
    """Signal the process group ``pid`` leads (spawn starts a session), else just ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop(pids: Iterable[int], grace_s: float, poll_s: float = 0.05) -> list[int]:
    """SIGTERM every pid, SIGKILL those still running after ``grace_s``; the pids that needed SIGKILL."""
    pids = [pid for pid in pids if is_running(pid)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(poll_s)
    killed = [pid for pid in pids if is_running(pid)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_running(pid) for pid in killed):
        time.sleep(poll_s)
    return killed
