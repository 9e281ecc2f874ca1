"""The Kubernetes topology as local processes: encoder replicas behind client-side round_robin, one perturb.

``python -m deploy.local up`` (``make up``) starts them on loopback, waits for grpc.health SERVING and writes
``<run-dir>/endpoints.json``; ``python -m deploy.local down`` (``make down``) stops them. Read the endpoints
with :func:`load_endpoints`; dial ``services.encoder.target`` with ``("grpc.lb_policy_name", "round_robin")``.
"""

from deploy.local.topology import DEFAULT_RUN_DIR, down, load_endpoints, restart, up

__all__ = ["DEFAULT_RUN_DIR", "down", "load_endpoints", "restart", "up"]
