"""REaaS edge client: what a phone or IoT device runs (numpy, scipy, grpcio, protobuf; no torch).

Fetch features (1 query per training input), train a small MLP on them, certify it in feature space
(BC: IBP/CROWN bisection; SC: randomized smoothing), and turn the feature radius into an image radius with
one F2IPerturb query (or none extra on the one-query curve path). The workflow is ``edge_client.workflow``;
this package exports its entry points and types. Names are imported lazily so that a small tool (e.g.
``edge_client.bench``) does not pay for gRPC.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClientConfig": "edge_client.sdk",
    "connect": "edge_client.workflow",
    "DownstreamConfig": "edge_client.workflow",
    "train_downstream": "edge_client.workflow",
    "Downstream": "edge_client.workflow",
    "CertifyConfig": "edge_client.certification",
    "certify_images": "edge_client.workflow",
    "Certificate": "edge_client.workflow",
    "certify_subset": "edge_client.workflow",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edge_client' has no attribute {name!r}")
