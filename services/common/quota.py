"""Per-key quotas in images per minute: a token bucket per key that refills continuously."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class QuotaExceeded(Exception):
    """The caller's image quota is spent; ``retry_after_s`` says when the request would fit again."""

    def __init__(self, key_name: str, images: int, images_per_minute: int, retry_after_s: float):
        self.retry_after_s = retry_after_s
        if images > images_per_minute:
            hint = f"a batch of {images} images exceeds the quota of {images_per_minute}/min; split it"
        else:
            hint = f"retry after {retry_after_s * 1000:.0f} ms"
        super().__init__(f"quota of {images_per_minute} images/min for key '{key_name}' exhausted: {hint}")


class QuotaLimiter:
    """Token buckets of capacity ``images_per_minute`` refilling at images_per_minute / 60 per second.

    ``split`` N > 1: this process is one of N workers behind one port, and enforces ceil(quota / N) of every
    quota, so the workers together never grant more than the quota (plus N - 1 rounding images). The price:
    a client whose calls all reach one worker (one HTTP/2 connection lands on one worker) gets 1/N of its
    quota; clients that spread over connections get all of it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, split: int = 1):
        self._clock = clock
        self._split = max(1, split)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, last refill time)

    def acquire(self, key_name: str, images: int, images_per_minute: int) -> None:
        """Take ``images`` tokens or raise QuotaExceeded; images_per_minute <= 0 means unlimited."""
        if images_per_minute <= 0:
            return
        images_per_minute = math.ceil(images_per_minute / self._split)
        rate_per_s = images_per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key_name, (float(images_per_minute), now))
            tokens = min(float(images_per_minute), tokens + (now - last) * rate_per_s)
            if tokens >= images:
                self._buckets[key_name] = (tokens - images, now)
                return
            self._buckets[key_name] = (tokens, now)
        if images > images_per_minute:
            retry_after_s = math.inf
        else:
            retry_after_s = (images - tokens) / rate_per_s
        raise QuotaExceeded(key_name, images, images_per_minute, retry_after_s)
