"""deploy/docker: no Docker engine here, so the Dockerfiles are checked statically: COPY sources exist in the
build context (the repository root), the entrypoint and command name real modules, the final user is not
root and matches the pods' runAsUser, and build.sh produces exactly the image references the overlays use.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    pairs = [text.split(None, 1) for text in joined]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions after the last FROM."""
    steps = instructions(path)
    last = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last:]


def exec_form(args: str) -> list[str]:
    """An ENTRYPOINT/CMD in JSON exec form (shell form is refused: signals would not reach the server)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def module_exists(module: str) -> bool:
    """True when ``python -m module`` would find a file in this repository."""
    base = ROOT.joinpath(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def test_every_image_has_a_dockerfile():
    names = {p.name for p in DOCKERFILES}
    expected = ("encoder", "encoder-gpu", "perturb", "perturb-gpu", "trainer")
    assert names == {f"{n}.Dockerfile" for n in expected}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    copies = [args for op, args in instructions(dockerfile) if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words[:-1] if not w.startswith("--")]
        assert sources, args
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} missing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_names_real_modules_and_runs_as_non_root(dockerfile):
    stage = final_stage(dockerfile)
    command = []
    for op, args in stage:
        if op in ("ENTRYPOINT", "CMD"):
            command += exec_form(args)
    modules = [command[i + 1] for i, word in enumerate(command[:-1]) if word == "-m"]
    assert modules, f"{dockerfile.name}: no `python -m MODULE` in ENTRYPOINT/CMD"
    for module in modules:
        assert module_exists(module), f"{dockerfile.name}: module {module} not in the repository"
    users = [args for op, args in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), dockerfile.name
    if "services.encoder" in modules or "services.perturb" in modules:
        assert modules[0] == "deploy.model_check", "servers start behind the model sha256 check"
        copied = " ".join(args for op, args in stage if op == "COPY")
        assert "deploy/model_check.py" in copied


def test_pods_run_as_the_image_user():
    uids = {[args for op, args in final_stage(p) if op == "USER"][-1].split(":")[0] for p in DOCKERFILES}
    run_as = set()
    for target in ("overlays/cpu", "overlays/gpu", "training"):
        run_as |= {str(uid) for uid in _find(render(ROOT / "deploy" / "k8s" / target), "runAsUser")}
    assert uids == run_as == {"10001"}


def _find(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from ([v] if k == key else _find(v, key))
    elif isinstance(node, list):
        for item in node:
            yield from _find(item, key)


def test_build_script_tags_every_image_the_manifests_use(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "GPU": "1"}
    subprocess.run(["bash", str(DOCKER / "build.sh")], env=env, check=True, timeout=30)
    built = {}
    for line in (tmp_path / "calls").read_text().splitlines():
        words = line.split()
        built[words[words.index("-t") + 1]] = words[words.index("-f") + 1]
    assert {Path(f).name for f in built.values()} == {p.name for p in DOCKERFILES}
    for dockerfile in built.values():
        assert (ROOT / dockerfile).is_file()
    used = set()
    for target in ("overlays/cpu", "overlays/gpu", "training"):
        used |= set(_find(render(ROOT / "deploy" / "k8s" / target), "image"))
    assert used <= set(built), used - set(built)


def test_cpu_encoder_image_needs_no_torch():
    """The encoder image installs only the cpu and server extras: its import graph must not reach torch."""
    code = ("import sys, services.encoder.__main__, deploy.model_check; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "False"


def test_pyproject_extras_used_by_the_dockerfiles_exist():
    extras = set()
    for path in DOCKERFILES:
        for op, args in instructions(path):
            if op == "RUN" and "pip install" in args:
                extras |= {e for group in _brackets(args) for e in group.split(",")}
    tomllib = pytest.importorskip("tomllib")
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras and extras <= declared, extras - declared


def _brackets(text: str) -> list[str]:
    out, rest = [], text
    while "'.[" in rest:
        rest = rest.split("'.[", 1)[1]
        out.append(rest.split("]", 1)[0])
    return out
