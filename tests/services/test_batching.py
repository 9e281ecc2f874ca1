"""The dynamic batching queue on its own: coalescing, per-caller rows, errors, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.common.status import Unavailable
from services.encoder.batching import DynamicBatcher


class _SlowModel:
    """features = per-image sum times 2, with a fixed cost per call; records batch sizes."""

    def __init__(self, cost_s: float = 0.02):
        self.cost_s = cost_s
        self.batch_sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.cost_s)
        self.batch_sizes.append(len(images))
        return 2 * images.reshape(len(images), -1).sum(axis=1, keepdims=True)


def _run_clients(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list[np.ndarray]:
    results: list[np.ndarray | None] = [None] * len(inputs)
    barrier = threading.Barrier(len(inputs))

    def client(i: int) -> None:
        barrier.wait()
        results[i] = batcher.submit(inputs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results  # type: ignore[return-value]


def test_concurrent_requests_are_coalesced_and_each_gets_its_rows():
    model = _SlowModel()
    batcher = DynamicBatcher(model, preferred_batch_images=64, max_queue_delay_ms=50)
    rng = np.random.default_rng(0)
    inputs = [rng.random((1 + i % 4, 1, 2, 2), dtype=np.float32) for i in range(32)]
    results = _run_clients(batcher, inputs)
    batcher.close()
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, 2 * x.reshape(len(x), -1).sum(axis=1, keepdims=True), rtol=1e-6)
    assert sum(model.batch_sizes) == sum(len(x) for x in inputs)
    assert len(model.batch_sizes) < 8 and max(model.batch_sizes) <= 64


def test_preferred_size_flushes_without_waiting_for_the_delay():
    model = _SlowModel(cost_s=0.0)
    batcher = DynamicBatcher(model, preferred_batch_images=4, max_queue_delay_ms=10_000)
    started = time.monotonic()
    results = _run_clients(batcher, [np.ones((2, 1, 1, 1), np.float32) for _ in range(4)])
    batcher.close()
    assert time.monotonic() - started < 5 and all(r.shape == (2, 1) for r in results)
    assert max(model.batch_sizes) <= 4


def test_a_failing_batch_fails_its_callers_only():
    calls = []

    def flaky(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return images.reshape(len(images), -1)

    batcher = DynamicBatcher(flaky, preferred_batch_images=8, max_queue_delay_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(np.zeros((1, 1, 1, 1), np.float32))
    assert batcher.submit(np.ones((1, 1, 1, 1), np.float32)).tolist() == [[1.0]]
    batcher.close()


def test_closed_batcher_is_unavailable_and_timeouts_raise_timeout_error():
    batcher = DynamicBatcher(_SlowModel(cost_s=0.5), preferred_batch_images=8, max_queue_delay_ms=0)
    with pytest.raises(TimeoutError):
        batcher.submit(np.zeros((1, 1, 1, 1), np.float32), timeout_s=0.05)
    batcher.close()
    with pytest.raises(Unavailable):
        batcher.submit(np.zeros((1, 1, 1, 1), np.float32))
