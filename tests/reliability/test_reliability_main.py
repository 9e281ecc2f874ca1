"""``python -m reliability``: --help, and a reduced run of one section writing the report with its goals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reliability.__main__ import goals, goals_met, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_sizes():
    result = subprocess.run(
        [sys.executable, "-m", "reliability", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--quick" in result.stdout and "--pairs" in result.stdout


def test_security_section_writes_the_report(stand_in_onnx, tmp_path):
    out = tmp_path / "reliability.json"
    status = main(
        [
            "--quick",
            "--sections",
            "security",
            "--model",
            str(stand_in_onnx),
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    report = json.loads(out.read_text())
    assert status == 0 and report["goals_met"] and report["security_ok"]
    assert report["models"] == [str(stand_in_onnx.resolve())]


def test_a_skipped_probe_fails_the_run(stand_in_onnx, tmp_path, monkeypatch, capsys):
    """Without h2 the 1 GiB length-prefix probe is skipped: the report says so and the run does not pass."""
    for name in ("h2", "h2.config", "h2.connection", "h2.events"):
        monkeypatch.setitem(sys.modules, name, None)  # import h2 raises ImportError
    out = tmp_path / "reliability.json"
    argv = ["--quick", "--sections", "security", "--model", str(stand_in_onnx), "--out", str(out)]
    status = main([*argv, "--work-dir", str(tmp_path / "work")])
    report = json.loads(out.read_text())
    goal = "oversize message rejected before allocation"
    assert status == 1 and report["goals_met"] is False
    assert report["goals"][goal] is None and report["goals_not_measured"] == [goal]
    assert report["security_ok"] is False and report["security_skipped"] == ["oversize.huge_length_prefix"]
    assert report["security"]["status"] == "skipped"
    assert f"[?] {goal}: NOT MEASURED" in capsys.readouterr().out


def test_unreadable_memory_is_not_a_pass():
    report = {"load_errors": 0, "load": {"max_memory_growth": None}}
    checks = goals(report, quick=True)
    assert checks["memory growth 30 s -> 60 s <= 10%"] is None and not goals_met(checks)
    report["load"]["max_memory_growth"] = 0.02
    assert goals_met(goals(report, quick=True))


def test_goals_flag_a_violation():
    report = {"soundness_violations": 1, "classifier_violations": 0, "soundness": {"encoders": {}}}
    assert goals(report, quick=True) == {
        "soundness_violations == 0": False,
        "classifier_violations == 0": True,
    }
