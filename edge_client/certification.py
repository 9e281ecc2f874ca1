"""Certifying inputs one journaled row at a time, for every method (REaaS BC and SC, the SEaaS baselines).

Per input: BC and SC cost 2 queries (Encode, then F2IPerturb when R_F > 0); the one-query SC path costs 1
(F2IPerturbCurve returns f(x) and the curve); SEaaS-SC / SEaaS-DS cost n0 + n Encode queries. Each input's
noise comes from ``input_rng(seed, index)``, so a resumed run gives the same numbers as an uninterrupted one.
Every row is timed the same way: ``service_seconds`` waiting on the services (network included),
``client_seconds`` the rest of ``seconds`` (features, bounds, smoothing, denoiser, MLP).
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
from edge_client.training import noise_sigma

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
        return SmoothingConfig(sigma=noise_sigma(mlp.spread, mlp.feature_dim, self.noise_c), n0=self.n0,
                               n=self.n, alpha=self.alpha)


class _Timed:
    """A service client whose calls add the seconds spent waiting on them to ``seconds``."""

    _CALLS = frozenset({"encode", "f2i", "curve", "semantic", "model_info"})

    def __init__(self, client):
        self._client = client
        self.seconds = 0.0

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name not in self._CALLS:
            return attribute

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def certify_one(index: int, image: np.ndarray, label: int, mlp: MLP, encoder, perturb,
                config: CertifyConfig, denoiser=None) -> dict:
    """Certify one test image [C, H, W]; returns its journal row (queries, bytes and timings included).

    ``perturb`` may be None for the SEaaS methods, which only query the encoder.
    """
    started = time.perf_counter()
    clients = [_Timed(client) for client in (encoder, perturb) if client is not None]
    before = [client.usage.snapshot() for client in clients]
    if config.method.startswith("seaas"):
        row = _certify_seaas(image, mlp, clients[0], config, input_rng(config.seed, index), denoiser)
    else:
        row = _certify_reaas(image, mlp, clients[0], clients[1], config, input_rng(config.seed, index))
    spent = [client.usage.since(b) for client, b in zip(clients, before, strict=True)]
    seconds = time.perf_counter() - started
    service_seconds = sum(client.seconds for client in clients)
    return {"index": int(index), "label": int(label), **row, "queries": sum(s.queries for s in spent),
            "bytes": sum(s.bytes for s in spent), "seconds": seconds, "service_seconds": service_seconds,
            "client_seconds": max(seconds - service_seconds, 0.0)}


def _certify_reaas(image: np.ndarray, mlp: MLP, encoder, perturb, config: CertifyConfig,
                   rng: np.random.Generator) -> dict:
    """BC or SC in feature space, then the image radius (F2IPerturb, or the curve of the one-query path)."""
    images = image[None]
    curve = None
    if config.method == "sc-curve":
        curve = perturb.curve(images, norm=config.image_norm, method=config.perturb_method,
                              num_radii=config.num_radii, min_radius=config.min_radius,
                              max_radius=config.max_radius, clip_to_pixel_box=config.clip_to_pixel_box)
        features = curve.features
    else:
        features = encoder.encode(images)
    clean_prediction = int(mlp.predict(features)[0])
    if config.method.startswith("bc"):
        predictions, feature_radii = certify_feature_radius(mlp, features,
                                                            BCConfig(method=config.method.split("-")[1]))
        prediction, feature_radius = int(predictions[0]), float(feature_radii[0])
    else:
        prediction, feature_radius = certify_features(mlp, features[0], config.smoothing(mlp), rng)
    if curve is not None:
        radius = radius_from_curve(*curve.curves[0], feature_radius)
        method_used = curve.methods_used[0]
    else:
        radii, methods = image_radii_by_query(perturb, images, np.array([feature_radius]),
                                              norm=config.image_norm, method=config.perturb_method,
                                              clip_to_pixel_box=config.clip_to_pixel_box)
        radius, method_used = float(radii[0]), methods[0]
    return {"prediction": prediction, "clean_prediction": clean_prediction, "feature_radius": feature_radius,
            "radius": radius, "method_used": method_used}


def _certify_seaas(image: np.ndarray, mlp: MLP, encoder, config: CertifyConfig, rng: np.random.Generator,
                   denoiser) -> dict:
    """SEaaS-SC / SEaaS-DS: image-space smoothing, every noisy copy one Encode query."""
    if config.method == "seaas-ds" and denoiser is None:
        raise ValueError("seaas-ds needs a denoiser (CertifyConfig.denoiser_path or the denoiser argument)")
    prediction, radius = certify_image(encoder, mlp, image, config.image_smoothing(), rng,
                                       denoiser if config.method == "seaas-ds" else None)
    return {"prediction": int(prediction), "radius": float(radius), "feature_radius": None,
            "method_used": config.method}


def load_denoiser(config: CertifyConfig, denoiser=None):
    """The SEaaS-DS denoiser: ``denoiser`` if given, else the ONNX file ``config.denoiser_path`` (or None)."""
    if config.method == "seaas-ds" and denoiser is None and config.denoiser_path:
        from edge_client.seaas_baselines import OnnxDenoiser

        return OnnxDenoiser(config.denoiser_path)
    return denoiser


def run_certification(journal: Journal, indices: Sequence[int], images: np.ndarray, labels: np.ndarray,
                      mlp: MLP, encoder, perturb, config: CertifyConfig,
                      on_row: Callable[[dict], None] | None = None, denoiser=None) -> list[dict]:
    """Certify ``images[k]`` (dataset index ``indices[k]``) for every index not yet in the journal."""
    denoiser = load_denoiser(config, denoiser)
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


def journal_header(config: CertifyConfig, model_sha256: str, mlp: MLP,
                   dataset: str = "fashion-mnist") -> dict:
    """The journal header identifying a run: configuration, encoder, downstream model (its ``MLP.sha256``)
    and dataset.

    Test indices are not part of it, so a run over a longer prefix of the test subset reuses the rows of a
    shorter one (rows are per index and seeded per index).
    """
    return {"config": asdict(config), "model_sha256": model_sha256, "mlp_sha256": mlp.sha256,
            "dataset": dataset}
