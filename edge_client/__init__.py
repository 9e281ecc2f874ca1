"""REaaS edge client: what a phone or IoT device runs (numpy, scipy, grpcio, protobuf; no torch).

Fetch features (1 query per training input), train a small MLP on them, certify it in feature space
(BC: IBP/CROWN bisection; SC: randomized smoothing), and turn the feature radius into an image radius with
one F2IPerturb query (or none extra on the one-query curve path). Names are imported lazily so that a
small tool (e.g. ``edge_client.bench``) does not pay for gRPC.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClientConfig": "edge_client.sdk", "EncoderClient": "edge_client.sdk", "PerturbClient": "edge_client.sdk",
    "ModelPin": "edge_client.sdk", "RetryPolicy": "edge_client.sdk", "ClientError": "edge_client.sdk",
    "ModelMismatchError": "edge_client.sdk", "UsageCounter": "edge_client.sdk",
    "FeatureCache": "edge_client.feature_cache", "fetch_features": "edge_client.feature_cache",
    "MLP": "edge_client.mlp", "TrainConfig": "edge_client.training", "train_mlp": "edge_client.training",
    "select_noise_scale": "edge_client.training", "select_hyperparameters": "edge_client.training",
    "BCConfig": "edge_client.base_certify", "certify_feature_radius": "edge_client.base_certify",
    "SmoothingConfig": "edge_client.smoothing", "certify_features": "edge_client.smoothing",
    "predict_features": "edge_client.smoothing", "ABSTAIN": "edge_client.smoothing",
    "radius_from_curve": "edge_client.radius", "Journal": "edge_client.journal",
    "summarize": "edge_client.metrics", "CertifyConfig": "edge_client.runner",
    "run_certification": "edge_client.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edge_client' has no attribute {name!r}")
