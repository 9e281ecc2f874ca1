"""OpenTelemetry tracing: a span per call; OTLP when an endpoint is configured, console in dev, else none."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

log = logging.getLogger(__name__)


class ServerTracerProvider(TracerProvider):
    """A TracerProvider that knows whether any span processor listens (``recording``).

    Building a span costs about as much as a single-image inference; with nobody to receive it, calls skip it.
    """

    recording = False

    def add_span_processor(self, span_processor) -> None:
        """Add ``span_processor``; from now on calls build spans."""
        super().add_span_processor(span_processor)
        self.recording = True


def make_tracer_provider(
    service: str, otlp_endpoint: str = "", console: bool = False
) -> ServerTracerProvider:
    """A TracerProvider for one server (not installed globally, so several servers can share a process)."""
    provider = ServerTracerProvider(resource=Resource.create({"service.name": f"reaas-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        log.info("tracing: OTLP exporter to %s", otlp_endpoint)
    elif console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        log.info("tracing: console exporter")
    return provider


def get_tracer(provider: TracerProvider) -> trace.Tracer:
    """The tracer servers use for their call spans."""
    return provider.get_tracer("reaas.services")
