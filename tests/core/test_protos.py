"""The checked-in gRPC stubs are exactly what `make protos` generates from the .proto files."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos").rglob("*.proto"))


def test_there_are_protos():
    names = {path.name for path in PROTOS}
    assert {"common.proto", "encoder.proto", "perturb.proto"} <= names


def test_checked_in_stubs_match_generated(tmp_path):
    pytest.importorskip("grpc_tools")
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
               f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *map(str, PROTOS)]
    subprocess.run(command, check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    stale = [str(rel) for rel in generated
             if not (ROOT / rel).exists() or not filecmp.cmp(tmp_path / rel, ROOT / rel, shallow=False)]
    assert not stale, f"stubs out of date, run `make protos`: {stale}"


def test_every_field_is_documented():
    """Each message field of our contract (reaas.v1; KServe's mirrors its upstream) carries a comment."""
    undocumented = []
    for path in sorted((ROOT / "protos" / "reaas" / "v1").glob("*.proto")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(
                ("syntax", "package", "import", "option", "//"))
            if is_field and "//" not in stripped and not lines[number - 1].strip().startswith("//"):
                undocumented.append(f"{path.name}:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)
