"""Every run-time module of the edge client imports with torch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNTIME_MODULES = ["edge_client"] + [f"edge_client.{name}" for name in (
    "sdk", "feature_cache", "mlp", "training", "bound_propagation", "base_certify", "smoothing", "radius",
    "journal", "metrics", "certification", "seaas_baselines", "semantic", "images", "workflow", "cli",
    "bench", "__main__")]

_SCRIPT = """
import importlib, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'onnxruntime'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Blocker())
for name in sys.argv[1:]:
    if name == 'edge_client.__main__':
        importlib.util.find_spec(name)
        continue
    importlib.import_module(name)
import edge_client
for n in edge_client.__all__:
    getattr(edge_client, n)
assert not any(m.split('.')[0] == 'torch' for m in sys.modules), 'torch got imported'
print('ok')
"""


def test_runtime_imports_without_torch_or_onnxruntime():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *RUNTIME_MODULES], env=env, capture_output=True,
                          text=True, timeout=60, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
