"""``python -m reliability``: --help, and a reduced run of one section writing the report with its goals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reliability.__main__ import goals, main

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


def test_goals_flag_a_violation():
    report = {"soundness_violations": 1, "classifier_violations": 0, "soundness": {"encoders": {}}}
    assert goals(report, quick=True) == {
        "soundness_violations == 0": False,
        "classifier_violations == 0": True,
    }
