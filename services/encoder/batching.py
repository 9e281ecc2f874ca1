"""Triton-style dynamic batching: concurrent requests are coalesced into one inference call.

One worker thread owns the model. It takes the oldest queued request, waits at most ``max_queue_delay_ms``
(counted from that request's arrival) for more to join until ``preferred_batch_images`` are queued, runs
them as one batch and hands each caller its own rows. While a batch runs, new requests queue up, so under
load batches grow without any delay at all.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from services.common.status import Unavailable


@dataclass
class _Pending:
    images: np.ndarray  # [b, C, H, W] float32
    arrived_s: float
    future: Future | asyncio.Future = field(default_factory=Future)
    loop: asyncio.AbstractEventLoop | None = None  # set when ``future`` is an asyncio future of that loop

    def start(self) -> bool:
        """Claim the request for a batch: False when its caller already gave up."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.cancelled()  # a late cancel is caught again in _resolve


def _resolve(outcomes: list[tuple[asyncio.Future, np.ndarray | BaseException]]) -> None:
    """On the event loop: hand each waiting coroutine its rows or the batch's exception."""
    for future, outcome in outcomes:
        if future.done():  # cancelled meanwhile (deadline)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class DynamicBatcher:
    """Coalesce ``submit`` calls from many threads into batched ``run(images [N,C,H,W]) -> [N, D]`` calls."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        preferred_batch_images: int,
        max_queue_delay_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run
        self._preferred = max(1, preferred_batch_images)
        self._delay_s = max(0.0, max_queue_delay_ms) / 1000.0
        self._on_batch = on_batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.largest_batch_requests = 0
        self._worker = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
        self._worker.start()

    def _enqueue(self, pending: _Pending) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("server is shutting down")
            self._queue.append(pending)
            self._queued_images += len(pending.images)
            self._cond.notify()

    def submit(self, images: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """Features [b, D] of ``images`` [b, C, H, W]; blocks until its batch has run."""
        pending = _Pending(images, time.monotonic())
        self._enqueue(pending)
        try:
            return pending.future.result(timeout=timeout_s)
        except TimeoutError as exc:
            pending.future.cancel()  # still queued: the worker skips it; already running: no effect
            raise TimeoutError("deadline passed while waiting for the batch") from exc

    async def submit_async(self, images: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """Features [b, D] of ``images`` [b, C, H, W], awaited on the running event loop."""
        loop = asyncio.get_running_loop()
        pending = _Pending(images, time.monotonic(), loop.create_future(), loop)
        self._enqueue(pending)
        try:
            return await asyncio.wait_for(pending.future, timeout_s)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # cancelled by wait_for: the worker skips it
            raise TimeoutError("deadline passed while waiting for the batch") from exc

    def close(self) -> None:
        """Finish what is queued, then stop the worker; later submits get UNAVAILABLE."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            flush_at = self._queue[0].arrived_s + self._delay_s
            while self._queued_images < self._preferred and not self._closed:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, images = [], 0
            while self._queue and (not batch or images + len(self._queue[0].images) <= self._preferred):
                pending = self._queue.popleft()
                batch.append(pending)
                images += len(pending.images)
            self._queued_images -= images
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [p for p in batch if p.start()]
            if not live:
                continue
            try:
                stacked = live[0].images if len(live) == 1 else np.concatenate([p.images for p in live])
                features = self._run(stacked)
            except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
                self._deliver(live, [exc] * len(live))
                continue
            self.batches_run += 1
            self.largest_batch_requests = max(self.largest_batch_requests, len(live))
            if self._on_batch is not None:
                self._on_batch(len(stacked))
            rows, start = [], 0
            for pending in live:
                stop = start + len(pending.images)
                rows.append(features[start:stop])
                start = stop
            self._deliver(live, rows)

    @staticmethod
    def _deliver(live: list[_Pending], outcomes: list) -> None:
        """Set each request's rows (or exception): threads directly, event loops once per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for pending, outcome in zip(live, outcomes, strict=True):
            if pending.loop is not None:
                by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
            elif isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop closed: its callers are gone
                pass
