"""Sound bounds of an encoder's feature shift over image-space balls, and the F2IPerturb radius search."""

from services.perturb.engine.engine import BoundEngine, CurveResult, EngineConfig, RadiusResult
from services.perturb.engine.errors import DeadlineExceeded, UnsupportedModelError

__all__ = [
    "BoundEngine",
    "CurveResult",
    "DeadlineExceeded",
    "EngineConfig",
    "RadiusResult",
    "UnsupportedModelError",
]
