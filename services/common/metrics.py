"""Usage accounting per API key and Prometheus metrics, one registry per server instance."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Usage:
    """What one call cost: images (queries) and serialized bytes in and out."""

    queries: int
    request_bytes: int
    response_bytes: int


class ServerMetrics:
    """Counters and histograms of one server: usage per key, calls per status code, latency, batch sizes."""

    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry()
        self._http = None
        self._queries = Counter(
            "reaas_queries",
            "images received (one image = one query)",
            ["service", "method", "key"],
            registry=self.registry,
        )
        self._request_bytes = Counter(
            "reaas_request_bytes",
            "serialized request bytes",
            ["service", "method", "key"],
            registry=self.registry,
        )
        self._response_bytes = Counter(
            "reaas_response_bytes",
            "serialized response bytes",
            ["service", "method", "key"],
            registry=self.registry,
        )
        self._calls = Counter(
            "reaas_rpc",
            "finished calls by status code",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self._latency_s = Histogram(
            "reaas_rpc_latency_seconds",
            "handler latency in seconds",
            ["service", "method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._batch_images = Histogram(
            "reaas_batch_images",
            "images per executed inference batch",
            ["service"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._cache = Counter(
            "reaas_cache_lookups", "result cache lookups", ["service", "outcome"], registry=self.registry
        )
        # labelled children by label values: ``labels()`` takes a lock and builds a key on every call
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        child = self._children.get((id(metric), labels))
        if child is None:
            child = self._children.setdefault((id(metric), labels), metric.labels(*labels))
        return child

    def record_usage(self, method: str, key: str, usage: Usage) -> None:
        """Add one call's usage to the key's counters."""
        labels = (self.service, method, key)
        self._child(self._queries, *labels).inc(usage.queries)
        self._child(self._request_bytes, *labels).inc(usage.request_bytes)
        self._child(self._response_bytes, *labels).inc(usage.response_bytes)

    def record_call(self, method: str, code: str, latency_s: float) -> None:
        """Count a finished call by status code name and observe its latency."""
        self._child(self._calls, self.service, method, code).inc()
        self._child(self._latency_s, self.service, method).observe(latency_s)

    def record_batch(self, images: int) -> None:
        """Observe the size of one executed inference batch."""
        self._child(self._batch_images, self.service).observe(images)

    def record_cache(self, hits: int, misses: int) -> None:
        """Count result-cache hits and misses."""
        self._cache.labels(self.service, "hit").inc(hits)
        self._cache.labels(self.service, "miss").inc(misses)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample, 0 if absent, e.g. ``value('reaas_queries_total', key='alice')``."""
        return self.registry.get_sample_value(name, {"service": self.service, **labels}) or 0.0

    def serve_http(self, port: int, address: str = "0.0.0.0") -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        self._http, _thread = start_http_server(port, addr=address, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop the /metrics HTTP server if one runs."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
