"""The real Encoder and Perturb servers in this process, on 127.0.0.1:0, serving a linear ONNX encoder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def serving_linear(root: Path, weight: np.ndarray, api_key: str, card: dict | None = None
                   ) -> Iterator[tuple[str, str]]:
    """Serve f(x) = W x (W [D, 784], images [1, 28, 28]) with one API key; yields the two addresses."""
    from onnx_helpers import export_encoder, linear_encoder

    from services.common.config import EncoderConfig, PerturbConfig
    from services.encoder.server import create_server as create_encoder
    from services.perturb.server import create_server as create_perturb

    path = export_encoder(linear_encoder(weight), root / "lin.onnx", card)
    keys = root / "keys.txt"
    keys.write_text(f"edge {api_key}\n")
    common = {"model_path": path, "port": 0, "bind_address": "127.0.0.1", "api_key_file": keys,
              "worker_threads": 4}
    encoder, encoder_port = create_encoder(EncoderConfig(**common, intra_op_threads=1))
    perturb, perturb_port = create_perturb(PerturbConfig(**common))
    encoder.start()
    perturb.start()
    try:
        yield f"127.0.0.1:{encoder_port}", f"127.0.0.1:{perturb_port}"
    finally:
        encoder.stop(0)
        perturb.stop(0)
