"""OpenTelemetry tracing: a span per call; OTLP when an endpoint is configured, console in dev, else none."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

log = logging.getLogger(__name__)


def make_tracer_provider(service: str, otlp_endpoint: str = "", console: bool = False) -> TracerProvider:
    """A TracerProvider for one server (not installed globally, so several servers can share a process)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"reaas-{service}"}))
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
