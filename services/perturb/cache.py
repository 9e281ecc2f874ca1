"""The per-image result cache: a thread-safe LRU map and its keys (image sha256 plus the request's settings).

Which results may be stored (only verified results of completed searches) is the data plane's policy
(``services/perturb/dataplane.py``); this module only stores and finds them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np


def image_sha256(image: np.ndarray) -> str:
    """sha256 of one image's shape and float32 little-endian bytes."""
    data = np.ascontiguousarray(image, dtype="<f4")
    return hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()


def image_keys(
    images: np.ndarray, rpc: str, settings: tuple, per_image: Sequence[float] | None = None
) -> list[tuple]:
    """One key per image of ``images`` [B, C, H, W]: (its sha256, ``rpc``, *settings[, its own value])."""
    if per_image is None:
        return [(image_sha256(image), rpc, *settings) for image in images]
    return [
        (image_sha256(image), rpc, *settings, float(value))
        for image, value in zip(images, per_image, strict=True)
    ]


class LruCache:
    """A thread-safe least-recently-used map with at most ``max_entries`` entries (0 disables it)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value or None (counts a hit or a miss)."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
