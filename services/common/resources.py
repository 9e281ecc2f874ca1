"""CPUs this process may really use: the cgroup CPU quota and the affinity mask, not the host's core count."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None when unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if quota_file.is_file() and period_file.is_file():
        quota, period = int(quota_file.read_text()), int(period_file.read_text())
        if quota > 0 and period > 0:
            return quota / period
    return None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """min(affinity mask size, ceil(cgroup quota)), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        limit = _cgroup_cpu_limit(root)
    except (OSError, ValueError):
        limit = None
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def compute_threads(configured: int) -> int:
    """Intra-op threads: the configured count when > 0, else the CPU quota."""
    return configured if configured > 0 else available_cpus()
