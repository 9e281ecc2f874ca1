"""The served model file: its bytes, sha256 and model card (``<name>.json`` beside ``<name>.onnx``)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reaas.v1 import common_pb2

log = logging.getLogger(__name__)

_SPREAD_KEYS = ("feature_spread", "feature_spread_rms")


@dataclass(frozen=True)
class ModelFile:
    """An ONNX encoder file with its sha256 (lowercase hex) and parsed model card ({} when absent)."""

    path: Path
    name: str
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def card_json(self) -> str:
        """The model card as JSON text ('' when there is none)."""
        return json.dumps(self.card, sort_keys=True) if self.card else ""

    def card_float(self, keys: Sequence[str]) -> float:
        """The first numeric card entry among ``keys`` (0.0 when none)."""
        for key in keys:
            value = self.card.get(key)
            if isinstance(value, (int, float)):
                return float(value)
        return 0.0

    @property
    def synbench_score(self) -> float:
        """SynBench score from the card (0.0 when unknown)."""
        return self.card_float(("synbench_score",))

    @property
    def synbench_threshold_accuracy(self) -> float:
        """The threshold accuracy a_t the SynBench score was computed at (0.0 when unknown)."""
        params = self.card.get("synbench")
        value = params.get("threshold_accuracy") if isinstance(params, dict) else None
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def feature_spread(self) -> float:
        """RMS distance of training features to their mean from the card (0.0 when unknown)."""
        return self.card_float(_SPREAD_KEYS)


def sha256_of(path: Path) -> str:
    """Lowercase hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model_file(path: Path, name: str = "") -> ModelFile:
    """Hash the model and read its card; warn when the card pins a different sha256."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    sha256 = sha256_of(path)
    card_path = path.with_suffix(".json")
    card: dict[str, Any] = {}
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        pinned = card.get("model_sha256")
        if pinned and pinned != sha256:
            # a card describing another model is never believed: serve without one
            log.error(
                "model card %s names sha256 %s but %s hashes to %s: ignoring the card",
                card_path, pinned, path, sha256,
            )
            card = {}
    else:
        log.warning("no model card at %s", card_path)
    return ModelFile(path=path, name=name or path.stem, sha256=sha256, card=card)


@dataclass(frozen=True)
class VerifiedFacts:
    """What the bound engine proved about the served model at load (zeros and False when it could not)."""

    lipschitz_bound_l2: float
    float_margin_l2: float
    served_precision: str
    verified: bool


def verify_model(path: Path, served_precision: str) -> VerifiedFacts:
    """Certified Lip_2 bound and floating-point margin of the ONNX model at ``path``, by the bound
    engine; unverified (zeros) where the engine is not installed (a torch-free encoder image)."""
    try:
        from services.perturb.engine import BoundEngine, EngineConfig
    except ImportError:
        log.warning("bound engine not installed: GetModelInfo reports the Lipschitz bound as unknown")
        return VerifiedFacts(0.0, 0.0, served_precision, False)
    engine = BoundEngine.from_onnx(Path(path), EngineConfig(served_format=served_precision))
    return engine_facts(engine)


def engine_facts(engine) -> VerifiedFacts:
    """The facts of an already loaded BoundEngine."""
    return VerifiedFacts(
        float(engine.lipschitz_bound_l2),
        float(engine.pixel_box_float_margin()),
        engine.config.served_format,
        True,
    )


def model_info(
    model: ModelFile,
    *,
    input_shape: Sequence[int],
    feature_dim: int,
    max_batch_size: int,
    execution_provider: str,
    facts: VerifiedFacts,
) -> common_pb2.ModelInfo:
    """The ModelInfo both services return from GetModelInfo."""
    return common_pb2.ModelInfo(
        model_name=model.name,
        model_sha256=model.sha256,
        input_shape=list(input_shape),
        input_min=0.0,
        input_max=1.0,
        feature_dim=int(feature_dim),
        lipschitz_bound_l2=facts.lipschitz_bound_l2,
        lipschitz_bound_verified=facts.verified,
        served_precision=facts.served_precision,
        float_margin_l2=facts.float_margin_l2,
        feature_spread=model.feature_spread,
        max_batch_size=max_batch_size,
        execution_provider=execution_provider,
        model_card_json=model.card_json,
        synbench_score=model.synbench_score,
        synbench_threshold_accuracy=model.synbench_threshold_accuracy,
    )
