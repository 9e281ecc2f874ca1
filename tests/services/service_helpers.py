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
