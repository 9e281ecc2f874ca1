"""Typed configuration of both services: one dataclass each, flags generated from it, env-var fallbacks.

Every field carries its flag, environment variable and help text; ``parse_config`` builds the argparse parser
from those so defaults and variables show in ``--help``. Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="ServerConfig")


def _opt(flag: str, env: str, help: str, default: Any = None) -> Any:
    return field(default=default, metadata={"flag": flag, "env": env, "help": help})


@dataclass(frozen=True)
class ServerConfig:
    """What both services share: network, auth, quotas, TLS, limits, observability."""

    model_path: Path | None = _opt(
        "--model", "REAAS_MODEL", "ONNX encoder file (model card: same name, .json)"
    )
    model_name: str = _opt("--model-name", "REAAS_MODEL_NAME", "served model name; empty = file stem", "")
    port: int = _opt("--port", "REAAS_PORT", "TCP port; 0 picks a free one", 50051)
    bind_address: str = _opt("--bind-address", "REAAS_BIND_ADDRESS", "address to listen on", "0.0.0.0")
    api_key_file: Path | None = _opt(
        "--api-key-file",
        "REAAS_API_KEY_FILE",
        "file of API keys, one per line: '<name> <key> [images_per_minute]'",
    )
    insecure_no_auth: bool = _opt(
        "--insecure-no-auth", "REAAS_INSECURE_NO_AUTH", "serve without API keys (dev only)", False
    )
    quota_images_per_minute: int = _opt(
        "--quota-images-per-minute",
        "REAAS_QUOTA_IMAGES_PER_MINUTE",
        "default per-key quota in images per minute; 0 = unlimited",
        0,
    )
    tls_cert: Path | None = _opt("--tls-cert", "REAAS_TLS_CERT", "PEM server certificate (enables TLS)")
    tls_key: Path | None = _opt("--tls-key", "REAAS_TLS_KEY", "PEM private key of --tls-cert")
    max_message_mb: int = _opt(
        "--max-message-mb", "REAAS_MAX_MESSAGE_MB", "largest request/response message in MiB", 64
    )
    max_batch_size: int = _opt(
        "--max-batch-size", "REAAS_MAX_BATCH_SIZE", "largest B accepted per request", 256
    )
    worker_threads: int = _opt("--worker-threads", "REAAS_WORKER_THREADS", "gRPC handler threads", 16)
    intra_op_threads: int = _opt(
        "--intra-op-threads",
        "REAAS_INTRA_OP_THREADS",
        "compute threads per inference; 0 = the CPU quota (cgroup / affinity)",
        0,
    )
    grace_s: float = _opt(
        "--grace-s", "REAAS_GRACE_S", "seconds in-flight calls get to finish on SIGTERM", 10.0
    )
    drain_delay_s: float = _opt(
        "--drain-delay-s",
        "REAAS_DRAIN_DELAY_S",
        "seconds health reports NOT_SERVING before the server stops accepting",
        0.0,
    )
    max_connection_age_s: float = _opt("--max-connection-age-s", "REAAS_MAX_CONNECTION_AGE_S",
                                       "close client connections after this many seconds (grace: --grace-s) "
                                       "so clients re-resolve DNS and reach new replicas; 0 = never",
                                       0.0)
    metrics_port: int = _opt(
        "--metrics-port", "REAAS_METRICS_PORT", "Prometheus /metrics HTTP port; -1 = off, 0 = a free port", -1
    )
    otlp_endpoint: str = _opt(
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP/gRPC collector for traces, e.g. http://otel:4317; empty = none",
        "",
    )
    trace_console: bool = _opt(
        "--trace-console",
        "REAAS_TRACE_CONSOLE",
        "print spans to stdout (dev) when no OTLP endpoint is set",
        False,
    )
    log_level: str = _opt("--log-level", "REAAS_LOG_LEVEL", "logging level", "INFO")
    served_precision: str = _opt(
        "--served-precision",
        "REAAS_SERVED_PRECISION",
        "arithmetic of the served features: 'float32' (CUDA without TF32, cuDNN implicit GEMM, no "
        "TensorRT) or 'reduced' (TensorRT FP16 / TF32 allowed; the perturb service widens its "
        "floating-point margin to a 10-bit mantissa). Set both services alike",
        "float32",
    )


@dataclass(frozen=True)
class EncoderConfig(ServerConfig):
    """Feature-API: ONNX Runtime session and the dynamic batching queue."""

    port: int = _opt("--port", "REAAS_PORT", "TCP port; 0 picks a free one", 50051)
    dynamic_batching: bool = _opt(
        "--dynamic-batching",
        "REAAS_DYNAMIC_BATCHING",
        "coalesce concurrent requests into one inference (Triton-style)",
        True,
    )
    max_queue_delay_ms: float = _opt(
        "--max-queue-delay-ms",
        "REAAS_MAX_QUEUE_DELAY_MS",
        "longest a request waits for others to join its batch",
        1.0,
    )
    preferred_batch_images: int = _opt(
        "--preferred-batch-images",
        "REAAS_PREFERRED_BATCH_IMAGES",
        "a batch runs at once when it holds this many images",
        256,
    )
    execution_providers: str = _opt(
        "--execution-providers",
        "REAAS_EXECUTION_PROVIDERS",
        "comma-separated ONNX Runtime providers in preference order; empty = "
        "TensorRT, CUDA, CPU filtered by availability",
        "",
    )
    workers: int = _opt(
        "--workers",
        "REAAS_WORKERS",
        "server processes sharing the port with SO_REUSEPORT (one event loop each); 0 = one per CPU of "
        "the quota. With N > 1, --intra-op-threads 0 gives each worker CPUs/N threads, every quota is "
        "split N ways (each worker enforces 1/N), and worker i serves /metrics on --metrics-port + i",
        1,
    )
    reuse_port: bool = _opt(
        "--reuse-port",
        "REAAS_REUSE_PORT",
        "bind with SO_REUSEPORT so other processes can share the port (set on --workers' processes)",
        False,
    )
    ready_fd: int = _opt(
        "--ready-fd",
        "REAAS_READY_FD",
        "file descriptor to write one byte to once serving; -1 = none (set on --workers' processes)",
        -1,
    )
    quota_split: int = _opt(
        "--quota-split",
        "REAAS_QUOTA_SPLIT",
        "this process enforces 1/N of every images-per-minute quota (set to N on --workers' processes)",
        1,
    )


@dataclass(frozen=True)
class PerturbConfig(ServerConfig):
    """F2IPerturb-API: bound engine, deadline margin, result cache."""

    port: int = _opt("--port", "REAAS_PORT", "TCP port; 0 picks a free one", 50052)
    max_batch_size: int = _opt(
        "--max-batch-size", "REAAS_MAX_BATCH_SIZE", "largest B accepted per request", 64
    )
    deadline_margin_ms: float = _opt(
        "--deadline-margin-ms",
        "REAAS_DEADLINE_MARGIN_MS",
        "time kept back from the caller's deadline to send the answer",
        50.0,
    )
    cache_entries: int = _opt(
        "--cache-entries", "REAAS_CACHE_ENTRIES", "results kept in the LRU cache; 0 = no cache", 100_000
    )
    concurrent_bounds: int = _opt(
        "--concurrent-bounds",
        "REAAS_CONCURRENT_BOUNDS",
        "bound-engine calls run at once (each uses --intra-op-threads torch threads); others queue",
        1,
    )
    feature_threads: int = _opt(
        "--feature-threads",
        "REAAS_FEATURE_THREADS",
        "ONNX Runtime (CPU, float32) intra-op threads computing the features F2IPerturbCurve returns",
        1,
    )


def _base_type(annotation: Any) -> type:
    """The non-None member of ``X | None`` (or X itself)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def build_parser(
    config_class: type[ServerConfig], description: str, prog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per config field; help shows the env var and the default."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind = _base_type(hints[f.name])
        help_text = f"{f.metadata['help']} [env {f.metadata['env']}]"
        if kind is bool:
            parser.add_argument(
                f.metadata["flag"],
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=help_text,
            )
        else:
            parser.add_argument(f.metadata["flag"], dest=f.name, type=kind, default=f.default, help=help_text)
    return parser


def parse_config(
    config_class: type[C],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    prog: str | None = None,
    environ: dict[str, str] | None = None,
) -> C:
    """Parse flags with env-var fallbacks into a frozen ``config_class``; exits with usage on bad input."""
    environ = dict(os.environ if environ is None else environ)
    parser = build_parser(config_class, description, prog)
    hints = typing.get_type_hints(config_class)
    env_defaults: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):
        raw = environ.get(f.metadata["env"])
        if raw is None:
            continue
        kind = _base_type(hints[f.name])
        if raw == "" and f.default is None:  # an empty variable unsets an optional path
            env_defaults[f.name] = None
            continue
        try:
            env_defaults[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError as exc:
            parser.error(f"environment variable {f.metadata['env']}={raw!r}: {exc}")
    parser.set_defaults(**env_defaults)
    args = parser.parse_args(argv)
    config = config_class(**vars(args))
    problem = validate(config)
    if problem:
        parser.error(problem)
    return config


def to_argv(config: ServerConfig) -> list[str]:
    """The flags that parse back into ``config`` (for starting a copy of this server in a child process)."""
    argv: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = f.metadata["flag"]
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def validate(config: ServerConfig) -> str | None:
    """A message describing the first invalid setting, or None when the config can start a server."""
    if config.model_path is None:
        return "--model is required"
    if config.api_key_file is None and not config.insecure_no_auth:
        return "refusing to start without API keys: pass --api-key-file or --insecure-no-auth"
    if (config.tls_cert is None) != (config.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if not 0 <= config.port <= 65535:
        return f"--port {config.port} out of range"
    if config.max_connection_age_s < 0:
        return "--max-connection-age-s must be >= 0"
    if config.max_batch_size < 1 or config.worker_threads < 1 or config.max_message_mb < 1:
        return "--max-batch-size, --worker-threads and --max-message-mb must be >= 1"
    if getattr(config, "workers", 1) < 0 or getattr(config, "quota_split", 1) < 1:
        return "--workers must be >= 0 and --quota-split >= 1"
    if config.served_precision not in ("float32", "reduced"):
        return f"--served-precision must be 'float32' or 'reduced', got {config.served_precision!r}"
    return None
