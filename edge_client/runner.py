"""Certifying a test subset end to end, one journaled row per input (the REaaS BC and SC paths).

Per input: BC and SC cost 2 queries (Encode, then F2IPerturb when R_F > 0); the one-query SC path costs 1
(F2IPerturbCurve returns f(x) and the curve). Each input's noise comes from ``input_rng(seed, index)``, so a
resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edge_client.base_certify import BCConfig, certify_feature_radius
from edge_client.journal import Journal
from edge_client.mlp import MLP
from edge_client.radius import image_radii_by_query, radius_from_curve
from edge_client.seaas_baselines import certify_image
from edge_client.smoothing import SmoothingConfig, certify_features, input_rng

CERTIFY_METHODS = ("bc-crown", "bc-ibp", "sc", "sc-curve", "seaas-sc", "seaas-ds")


@dataclass(frozen=True)
class CertifyConfig:
    """How to certify each test input; recorded in the journal header."""

    method: str = "sc"  # one of CERTIFY_METHODS
    noise_c: float = 1.0  # SC: sigma_F = noise_c * S / sqrt(d)
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    seed: int = 0
    perturb_method: str = "auto"  # server-side bound for F2IPerturb
    image_norm: str = "l2"
    clip_to_pixel_box: bool = False
    num_radii: int = 0  # curve ladder; 0 = server default
    min_radius: float = 0.0
    max_radius: float = 0.0
    image_sigma: float = 0.25  # SEaaS-SC / SEaaS-DS: image-space noise std, pixel units
    denoiser_path: str = ""  # SEaaS-DS: the exported ONNX denoiser

    def __post_init__(self) -> None:
        if self.method not in CERTIFY_METHODS:
            raise ValueError(f"method must be one of {CERTIFY_METHODS}, got {self.method!r}")

    def image_smoothing(self) -> SmoothingConfig:
        """The smoothing configuration of the SEaaS baselines (noise in image space)."""
        return SmoothingConfig(sigma=self.image_sigma, n0=self.n0, n=self.n, alpha=self.alpha)

    def smoothing(self, mlp: MLP) -> SmoothingConfig:
        """The smoothing configuration for this MLP's feature spread."""
        sigma = self.noise_c * mlp.spread / np.sqrt(mlp.feature_dim)
        return SmoothingConfig(sigma=sigma, n0=self.n0, n=self.n, alpha=self.alpha)


def certify_one(index: int, image: np.ndarray, label: int, mlp: MLP, encoder, perturb,
                config: CertifyConfig, denoiser=None) -> dict:
    """Certify one test image [C, H, W]; returns its journal row (queries and bytes included)."""
    if config.method.startswith("seaas"):
        return _certify_one_seaas(index, image, label, mlp, encoder, config, denoiser)
    started = time.perf_counter()
    before = [client.usage.snapshot() for client in (encoder, perturb)]
    images = image[None]
    curve = None
    if config.method == "sc-curve":
        curve = perturb.curve(images, norm=config.image_norm, method=config.perturb_method,
                              num_radii=config.num_radii, min_radius=config.min_radius,
                              max_radius=config.max_radius, clip_to_pixel_box=config.clip_to_pixel_box)
        features = curve.features
    else:
        features = encoder.encode(images)
    computing = time.perf_counter()
    clean_prediction = int(mlp.predict(features)[0])
    if config.method.startswith("bc"):
        bc = BCConfig(method=config.method.split("-")[1])
        predictions, feature_radii = certify_feature_radius(mlp, features, bc)
        prediction, feature_radius = int(predictions[0]), float(feature_radii[0])
    else:
        prediction, feature_radius = certify_features(mlp, features[0], config.smoothing(mlp),
                                                      input_rng(config.seed, index))
    client_seconds = time.perf_counter() - computing  # local work only, no waiting
    if curve is not None:
        radius = radius_from_curve(*curve.curves[0], feature_radius)
        method_used = curve.methods_used[0]
    else:
        radii, methods = image_radii_by_query(perturb, images, np.array([feature_radius]),
                                              norm=config.image_norm, method=config.perturb_method,
                                              clip_to_pixel_box=config.clip_to_pixel_box)
        radius, method_used = float(radii[0]), methods[0]
    spent = [client.usage.since(b) for client, b in zip((encoder, perturb), before, strict=True)]
    return {"index": int(index), "label": int(label), "prediction": prediction,
            "clean_prediction": clean_prediction, "feature_radius": feature_radius, "radius": radius,
            "method_used": method_used, "queries": sum(s.queries for s in spent),
            "bytes": sum(s.bytes for s in spent), "client_seconds": client_seconds,
            "seconds": (seconds := time.perf_counter() - started),
            "service_seconds": seconds - client_seconds}  # waiting on the services, network included


def _certify_one_seaas(index: int, image: np.ndarray, label: int, mlp: MLP, encoder, config: CertifyConfig,
                       denoiser) -> dict:
    """SEaaS-SC / SEaaS-DS row: image-space smoothing, every noisy copy one Encode query."""
    started = time.perf_counter()
    before = encoder.usage.snapshot()
    if config.method == "seaas-ds" and denoiser is None:
        raise ValueError("seaas-ds needs a denoiser (CertifyConfig.denoiser_path or the denoiser argument)")
    prediction, radius = certify_image(encoder, mlp, image, config.image_smoothing(),
                                       input_rng(config.seed, index),
                                       denoiser if config.method == "seaas-ds" else None)
    spent = encoder.usage.since(before)
    seconds = time.perf_counter() - started
    return {"index": int(index), "label": int(label), "prediction": int(prediction), "radius": float(radius),
            "feature_radius": None, "method_used": config.method, "queries": spent.queries,
            "bytes": spent.bytes, "client_seconds": None, "seconds": seconds}


def run_certification(journal: Journal, indices: Sequence[int], images: np.ndarray, labels: np.ndarray,
                      mlp: MLP, encoder, perturb, config: CertifyConfig,
                      on_row: Callable[[dict], None] | None = None, denoiser=None) -> list[dict]:
    """Certify ``images[k]`` (dataset index ``indices[k]``) for every index not yet in the journal."""
    if config.method == "seaas-ds" and denoiser is None and config.denoiser_path:
        from edge_client.seaas_baselines import OnnxDenoiser

        denoiser = OnnxDenoiser(config.denoiser_path)
    done = journal.done
    for k, index in enumerate(indices):
        if int(index) in done:
            continue
        row = certify_one(int(index), images[k], int(labels[k]), mlp, encoder, perturb, config, denoiser)
        journal.append(row)
        if on_row is not None:
            on_row(row)
    wanted = {int(i) for i in indices}
    return [row for row in journal.rows() if int(row["index"]) in wanted]


def journal_header(config: CertifyConfig, model_sha256: str, mlp_sha256: str,
                   dataset: str = "fashion-mnist") -> dict:
    """The journal header identifying a run: configuration, encoder, downstream model and dataset.

    Test indices are not part of it, so a run over a longer prefix of the test subset reuses the rows of a
    shorter one (rows are per index and seeded per index).
    """
    return {"config": asdict(config), "model_sha256": model_sha256, "mlp_sha256": mlp_sha256,
            "dataset": dataset}
