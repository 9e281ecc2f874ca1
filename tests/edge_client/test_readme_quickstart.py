"""The README's quick start runs exactly as printed against the real Encoder and Perturb services.

The code block under "## Quick start: your own images" is extracted from README.md and run unmodified in a
fresh interpreter, in a folder holding the files it reads (images.npy, labels.npy, new_image.npy), with the
services' addresses and API key in the environment variables it reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("services.encoder.server")
pytest.importorskip("services.perturb.server")

from real_services import serving_linear  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Quick start: your own images"


def quickstart_code(readme: Path = ROOT / "README.md") -> str:
    """The first ```python block after the quick-start heading, as printed."""
    text = readme.read_text()
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    block = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.DOTALL)
    assert block is not None, "the quick start has no python block"
    return block.group(1)


def _clusters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of images [n, 1, 28, 28] in [0, 1]: a bright band at a class-dependent height."""
    labels = np.arange(n) % 3
    images = 0.1 * rng.random((n, 1, 28, 28), dtype=np.float32)
    for k, label in enumerate(labels):
        images[k, 0, 8 * label:8 * label + 8] += 0.8
    return np.clip(images, 0.0, 1.0), labels


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The environment the quick start reads: both addresses and the API key."""
    weight = np.random.default_rng(1).normal(size=(6, 784)).astype(np.float32) / 28.0
    root = tmp_path_factory.mktemp("quickstart-services")
    with serving_linear(root, weight, "k3y-quick", {"lipschitz_bound_l2": 3.5}) as (encoder, perturb):
        yield {"REAAS_ENCODER": encoder, "REAAS_PERTURB": perturb, "REAAS_API_KEY": "k3y-quick"}


def test_the_quick_start_runs_as_printed(services, tmp_path):
    rng = np.random.default_rng(0)
    images, labels = _clusters(240, rng)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "new_image.npy", _clusters(2, rng)[0][1])  # a class-1 image [1, 28, 28]
    env = {**os.environ, **services,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    proc = subprocess.run([sys.executable, "-c", quickstart_code()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"abstain|label [012], certified radius \d+\.\d{4}", out), proc.stdout
    assert out.startswith("label 1"), out  # the classes are far apart: the new image is certified as class 1
