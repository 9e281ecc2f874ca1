"""Plain helpers for the service tests: API keys, call metadata, random images, config copies."""

from __future__ import annotations

import dataclasses

import numpy as np

KEYS = {"alice": "key-alice", "bob": "key-bob"}  # bob's quota: 10 images/min (see the api_key_file fixture)


def auth(name: str = "alice") -> tuple[tuple[str, str]]:
    """Call metadata carrying ``name``'s key."""
    return (("authorization", f"Bearer {KEYS[name]}"),)


def images(batch: int, seed: int = 0) -> np.ndarray:
    """Random images [B,1,28,28] float32 in [0, 1]."""
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def replace(config, **changes):
    """A copy of a frozen config with ``changes``."""
    return dataclasses.replace(config, **changes)


class EngineFacts:
    """What a stand-in bound engine must answer for the data plane's model facts (a 1x28x28 -> 3 model)."""

    input_shape = (1, 28, 28)
    feature_dim = 3
    lipschitz_bound_l2 = 2.0

    @property
    def config(self):
        from services.perturb.engine import EngineConfig

        return EngineConfig()

    def pixel_box_float_margin(self) -> float:
        return 1e-3
