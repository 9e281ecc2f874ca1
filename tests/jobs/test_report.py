"""Certified-accuracy metrics against hand-computed values, and the writers' outputs."""

import json

import numpy as np
import pytest

from jobs import report


def test_certified_accuracy_and_acr_by_hand():
    radii = np.array([0.5, 0.2, -1.0, 1.0])  # -1: abstained
    correct = np.array([True, True, False, False])
    assert report.certified_accuracy(radii, correct, 0.0) == 0.5
    assert report.certified_accuracy(radii, correct, 0.25) == 0.25
    assert report.certified_accuracy(radii, correct, 1.0) == 0.0  # the r=1 one is wrong
    assert report.average_certified_radius(radii, correct) == pytest.approx((0.5 + 0.2) / 4)


def test_abstention_never_counts():
    radii, correct = np.array([-1.0]), np.array([True])
    assert report.certified_accuracy(radii, correct, 0.0) == 0.0
    assert report.average_certified_radius(radii, correct) == 0.0


def test_accuracy_columns_names_and_monotonicity():
    rng = np.random.default_rng(0)
    radii, correct = rng.random(100), rng.random(100) < 0.8
    columns = report.accuracy_columns(radii, correct)
    curve = [columns[report.radius_key(r)] for r in report.REPORT_RADII if r > 0]
    assert curve == sorted(curve, reverse=True)
    expected = {"clean_accuracy", "acr", *(report.radius_key(r) for r in (0.1, 0.25, 0.5, 0.75, 1.0))}
    assert set(columns) == expected


def test_markdown_table_formats_cells():
    table = report.markdown_table([{"a": 100_100, "b": 0.1234567, "c": None}], ["a", "b", "c"])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 100,100 | 0.1235 | — |"]


def test_writers(tmp_path):
    report.write_json(tmp_path / "x" / "r.json", [{"a": np.float64(1.5)}])
    assert json.loads((tmp_path / "x" / "r.json").read_text()) == [{"a": 1.5}]
    report.plot_certified_accuracy({"demo": (np.array([0.3, 0.6]), np.array([True, False]))},
                                   tmp_path / "p.png", "demo")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
