"""Building and running a service's gRPC server: auth, limits, health, reflection, TLS, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import ApiKeyInterceptor, AsyncApiKeyInterceptor, load_api_keys
from services.common.config import ServerConfig
from services.common.metrics import ServerMetrics
from services.common.quota import QuotaLimiter
from services.common.rpc import ServiceRuntime
from services.common.tracing import get_tracer, make_tracer_provider

log = logging.getLogger(__name__)
T = TypeVar("T")

# register(server, runtime) adds the servicers and returns their full service names.
Register = Callable[[grpc.Server, ServiceRuntime], list[str]]


class EventLoopThread:
    """An asyncio event loop in its own daemon thread, for a grpc.aio server behind a blocking API."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class ManagedServer:
    """A started-or-not grpc.Server whose ``stop`` first flips health to NOT_SERVING, then drains.

    With ``loop`` the server is a grpc.aio server living on that loop; the methods stay blocking.
    """

    def __init__(
        self,
        server: grpc.Server | grpc.aio.Server,
        port: int,
        runtime: ServiceRuntime,
        health_servicer: health.HealthServicer,
        config: ServerConfig,
        on_stopped: list[Callable[[], None]],
        tracer_provider,
        loop: EventLoopThread | None = None,
    ):
        self._loop = loop
        self.grpc_server = server
        self.port = port
        self.runtime = runtime
        self.health = health_servicer
        self._config = config
        self._on_stopped = on_stopped
        self.tracer_provider = tracer_provider
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.metrics_port: int | None = None

    @property
    def metrics(self) -> ServerMetrics:
        """This server's Prometheus metrics."""
        return self.runtime.metrics

    def start(self) -> ManagedServer:
        """Start serving (and /metrics when configured)."""
        if self._loop is not None:
            self._loop.run(self.grpc_server.start())
        else:
            self.grpc_server.start()
        if self._config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(self._config.metrics_port, self._config.bind_address)
            log.info("metrics on :%d/metrics", self.metrics_port)
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """NOT_SERVING, wait the drain delay, stop accepting, let in-flight calls finish within ``grace``."""
        with self._stop_lock:
            if not self._stopped.is_set():
                self.runtime.draining.set()
                if self._loop is not None:
                    self._loop.run(self.health.enter_graceful_shutdown())
                else:
                    self.health.enter_graceful_shutdown()
                if self._config.drain_delay_s > 0:
                    time.sleep(self._config.drain_delay_s)
                if self._loop is not None:
                    self._loop.run(self.grpc_server.stop(grace))
                else:
                    self.grpc_server.stop(grace).wait()
                for callback in self._on_stopped:
                    callback()
                self.metrics.close()
                self.tracer_provider.shutdown()
                if self._loop is not None:
                    self._loop.close()
                self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` seconds pass (False)."""
        return self._stopped.wait(timeout)


class DecodingInterceptor(grpc.ServerInterceptor):
    """Parse unary requests in the handler: undecodable bytes get INVALID_ARGUMENT, not gRPC's INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, inner = handler.request_deserializer, handler.unary_unary

        def decode_then_call(raw: bytes, context):
            try:
                request = parse(raw)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's malformed message
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request is not a valid {handler_call_details.method} message "
                              f"({type(exc).__name__})")
            return inner(request, context)

        return handler._replace(request_deserializer=None, unary_unary=decode_then_call)


class AsyncDecodingInterceptor(grpc.aio.ServerInterceptor):
    """:class:`DecodingInterceptor` for the grpc.aio server."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, inner = handler.request_deserializer, handler.unary_unary

        async def decode_then_call(raw: bytes, context):
            try:
                request = parse(raw)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's malformed message
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"request is not a valid {handler_call_details.method} message "
                                    f"({type(exc).__name__})")
            return await inner(request, context)

        return handler._replace(request_deserializer=None, unary_unary=decode_then_call)


def _read(path: Path) -> bytes:
    return Path(path).read_bytes()


def build_server(
    config: ServerConfig,
    service: str,
    register: Register,
    on_stopped: list[Callable[[], None]] | None = None,
    metrics: ServerMetrics | None = None,
    *,
    asynchronous: bool = False,
    reuse_port: bool = False,
) -> tuple[ManagedServer, int]:
    """Assemble a server for ``service`` (not started) and bind it; returns (server, bound port).

    ``asynchronous``: a grpc.aio server on its own event-loop thread (``register`` then adds servicers whose
    methods are coroutines); else a thread-pool server. ``reuse_port``: bind with SO_REUSEPORT so several
    processes share the port and the kernel spreads connections over them.
    """
    keys = load_api_keys(config.api_key_file) if config.api_key_file is not None else None
    if keys is None and not config.insecure_no_auth:
        raise ValueError("refusing to start without API keys: set api_key_file or insecure_no_auth")
    tracer_provider = make_tracer_provider(service, config.otlp_endpoint, config.trace_console)
    runtime = ServiceRuntime(
        service=service,
        metrics=metrics if metrics is not None else ServerMetrics(service),
        tracer=get_tracer(tracer_provider),
        quota=QuotaLimiter(split=getattr(config, "quota_split", 1)),
        default_images_per_minute=config.quota_images_per_minute,
        tracing=lambda: tracer_provider.recording,
    )
    max_bytes = config.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        *_connection_age_options(config),
    ]
    if asynchronous:
        loop = EventLoopThread(f"{service}-aio")
        return loop.run(_assemble_async(config, service, register, runtime, keys, options, on_stopped or [],
                                        tracer_provider, loop))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.worker_threads, thread_name_prefix=f"{service}-rpc"),
        interceptors=[ApiKeyInterceptor(keys), DecodingInterceptor()],
        options=options,
    )
    service_names = register(server, runtime)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = _add_services_and_bind(server, config, service_names, health_servicer)
    managed = ManagedServer(server, port, runtime, health_servicer, config, on_stopped or [], tracer_provider)
    _log_settings(service, config, keys)
    return managed, port


async def _assemble_async(config, service, register, runtime, keys, options, on_stopped, tracer_provider,
                          loop: EventLoopThread) -> tuple[ManagedServer, int]:
    """The grpc.aio half of ``build_server``; runs on ``loop``, which the server then lives on."""
    server = grpc.aio.server(
        interceptors=[AsyncApiKeyInterceptor(keys), AsyncDecodingInterceptor()],
        options=options,
    )
    service_names = register(server, runtime)
    health_servicer = health.aio.HealthServicer()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = _add_services_and_bind(server, config, service_names, health_servicer)
    managed = ManagedServer(server, port, runtime, health_servicer, config, on_stopped, tracer_provider, loop)
    _log_settings(service, config, keys)
    return managed, port


def _add_services_and_bind(server, config: ServerConfig, service_names: list[str], health_servicer) -> int:
    """Add health and reflection, bind the configured address (TLS when configured); returns the port."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{config.bind_address}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials([(_read(config.tls_key), _read(config.tls_cert))])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port


def _log_settings(service: str, config: ServerConfig, keys) -> None:
    log.info(
        "%s: auth %s, TLS %s, quota %s images/min, max message %d MiB",
        service,
        "off" if keys is None else f"{len(keys)} keys",
        "on" if config.tls_cert else "off",
        config.quota_images_per_minute or "unlimited",
        config.max_message_mb,
    )


def serve_until_signal(server: ManagedServer, config: ServerConfig) -> None:
    """Start, log the address, and on SIGTERM/SIGINT drain in-flight calls within ``config.grace_s``."""
    server.start()
    log.info("listening on %s:%d", config.bind_address, server.port)
    ready_fd = getattr(config, "ready_fd", -1)
    if ready_fd >= 0:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    def on_signal(signum, _frame):
        log.info("signal %d: draining (grace %.1f s)", signum, config.grace_s)
        threading.Thread(target=server.stop, args=(config.grace_s,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not server.wait_for_termination(timeout=1.0):
        pass
    log.info("stopped")


def configure_logging(level: str) -> None:
    """One-line log records with time, level and logger."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _connection_age_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel args that recycle client connections so DNS-based round_robin sees new replicas."""
    if config.max_connection_age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.grace_s * 1000))]
