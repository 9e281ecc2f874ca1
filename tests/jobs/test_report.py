"""Report rows and writers; their numbers come from the one metrics module (edge_client.metrics)."""

import json

import numpy as np

from edge_client import metrics
from jobs import report


def test_the_report_has_no_metrics_of_its_own():
    assert report.certified_accuracy is metrics.certified_accuracy
    assert not hasattr(report, "average_certified_radius") and not hasattr(report, "accuracy_columns")


def test_radius_key():
    assert [report.radius_key(r) for r in (0.1, 0.25, 1.0)] == [
        "certified_accuracy_0.1", "certified_accuracy_0.25", "certified_accuracy_1"]


def test_markdown_table_formats_cells():
    table = report.markdown_table([{"a": 100_100, "b": 0.1234567, "c": None, "d": float("nan")}],
                                  ["a", "b", "c", "d"])
    assert table.splitlines() == ["| a | b | c | d |", "|---|---|---|---|", "| 100,100 | 0.1235 | — | — |"]


def test_writers(tmp_path):
    report.write_json(tmp_path / "x" / "r.json", [{"a": np.float64(1.5)}])
    assert json.loads((tmp_path / "x" / "r.json").read_text()) == [{"a": 1.5}]
    report.plot_certified_accuracy({"demo": (np.array([True, False]), np.array([0.3, 0.6]))},
                                   tmp_path / "p.png", "demo")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
