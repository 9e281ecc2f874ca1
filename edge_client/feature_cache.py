"""On-disk cache of fetched features, keyed by dataset, split, indices, variant and model sha256.

Re-training on cached features costs no queries. Every entry records the (queries, bytes) fetching it cost,
so a report over cached features still states the protocol's cost; an entry without that record (written by
an older client) is fetched again rather than reported as free. Writes are atomic (temporary file, fsync,
rename), so a killed fetch never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CacheKey:
    """What identifies a cached feature matrix."""

    dataset: str  # e.g. "fashion-mnist"
    split: str  # "train" or "test"
    indices: tuple[int, ...]  # dataset indices, in row order
    model_sha256: str  # the pinned encoder
    variant: str = "clean"  # e.g. "noisy-sigma0.25-k25-seed0" for SEaaS-SC training copies

    def filename(self) -> str:
        """A file name unique to this key."""
        digest = hashlib.sha256(np.asarray(self.indices, dtype=np.int64).tobytes()).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{self.dataset}-{self.split}-"
                       f"{self.variant}")
        return f"{safe}-n{len(self.indices)}-{digest}.npz"


class FeatureCache:
    """Feature matrices under ``root/<model_sha256[:16]>/``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: CacheKey) -> Path:
        """Where the entry for ``key`` lives."""
        if not key.model_sha256:
            raise ValueError("a cache key needs the model sha256 (pin the model first)")
        return self.root / key.model_sha256[:16] / key.filename()

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The cached features [N, ...] for ``key``, or None."""
        path = self.path(key)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            if str(data["model_sha256"]) != key.model_sha256 or not np.array_equal(
                    data["indices"], np.asarray(key.indices, dtype=np.int64)):
                return None
            return np.array(data["features"])

    def fetch_cost(self, key: CacheKey) -> tuple[int, int] | None:
        """(queries, bytes) the cached entry cost when it was fetched, or None if unknown or absent."""
        path = self.path(key)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            if "fetch_cost" not in data.files:
                return None
            queries, num_bytes = (int(v) for v in data["fetch_cost"])
            return queries, num_bytes

    def put(self, key: CacheKey, features: np.ndarray, fetch_cost: tuple[int, int]) -> Path:
        """Store features [N, ...] for ``key`` atomically, with the (queries, bytes) they cost; the path."""
        if features.shape[0] != len(key.indices):
            raise ValueError(f"{features.shape[0]} feature rows for {len(key.indices)} indices")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as handle:
            np.savez(handle, features=features, indices=np.asarray(key.indices, dtype=np.int64),
                     model_sha256=np.array(key.model_sha256),
                     fetch_cost=np.asarray(fetch_cost, dtype=np.int64))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def get_or_fetch(self, key: CacheKey, fetch: Callable[[], np.ndarray],
                     measure: Callable[[], tuple[int, int]]) -> tuple[np.ndarray, tuple[int, int], bool]:
        """Cached features for ``key``, else ``fetch()`` and store them; (features, (queries, bytes), cached).

        ``measure()`` returns running (queries, bytes) totals; their growth during ``fetch`` is the entry's
        fetch cost, stored with it and returned on every later hit.
        """
        cached, cost = self.get(key), self.fetch_cost(key)
        if cached is not None and cost is not None:
            return cached, cost, True
        before = measure()
        features = np.asarray(fetch())
        after = measure()
        cost = (after[0] - before[0], after[1] - before[1])
        self.put(key, features, cost)
        return features, cost, False
