"""Semantic F2IPerturb (Semantify-NN): certified brightness / contrast ranges for a feature radius R_F."""

from services.perturb.semantic.certify import SemanticCertifier, SemanticConfig, SemanticResult
from services.perturb.semantic.sp_layer import KINDS

__all__ = ["KINDS", "SemanticCertifier", "SemanticConfig", "SemanticResult"]
