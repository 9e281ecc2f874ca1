"""The encoder Pareto ledger: merging cards by sha256, the front, labels, and the CLI's files."""

from __future__ import annotations

import json

import pytest

from benchmarks import encoder_pareto


def _card(sha: str, acc: float, ls: float, **training) -> dict:
    return {"model_sha256": sha, "linear_probe_accuracy": acc, "lipschitz_over_spread": ls,
            "lipschitz_bound_l2": ls, "command": f"train {sha}", "training": training}


def test_front_keeps_exactly_the_undominated_points():
    entries = [encoder_pareto.point(c) for c in (
        _card("a", 0.86, 150.0), _card("b", 0.83, 0.20), _card("c", 0.80, 0.17),
        _card("d", 0.79, 0.18),  # dominated by c (more accurate and more robust)
        _card("e", 0.79, 0.16), _card("f", 0.83, 0.25),  # f dominated by b
    )]
    front = encoder_pareto.pareto_front(entries)
    assert [e["model_sha256"] for e in front] == ["e", "c", "b", "a"]
    # brute-force oracle: a point is on the front iff nothing is at least as good in both and better in one
    for entry in entries:
        beaten = any(o["linear_probe_accuracy"] >= entry["linear_probe_accuracy"]
                     and o["lipschitz_over_spread"] <= entry["lipschitz_over_spread"] and o is not entry
                     and (o["linear_probe_accuracy"], o["lipschitz_over_spread"])
                     != (entry["linear_probe_accuracy"], entry["lipschitz_over_spread"]) for o in entries)
        assert (entry in front) == (not beaten)


def test_merge_keeps_old_points_and_replaces_by_sha():
    ledger = encoder_pareto.merge([], [_card("old", 0.79, 0.16), _card("x", 0.5, 1.0)])
    merged = encoder_pareto.merge(ledger, [_card("x", 0.83, 0.2), _card("new", 0.86, 150.0)])
    by_sha = {e["model_sha256"]: e for e in merged}
    assert set(by_sha) == {"old", "x", "new"}
    assert by_sha["x"]["linear_probe_accuracy"] == 0.83
    assert [e["model_sha256"] for e in merged] == ["new", "x", "old"]  # by accuracy


def test_missing_field_is_named():
    with pytest.raises(KeyError, match="lipschitz_over_spread"):
        encoder_pareto.point({"model_sha256": "a", "linear_probe_accuracy": 0.5})


def test_labels_name_the_recipe():
    assert encoder_pareto.describe({"training": {"mode": "moco", "lam": 0.0, "epochs": 20}}) == "moco 20 ep"
    label = encoder_pareto.describe({"training": {"mode": "rrm", "lam": 0.2, "epochs": 60,
                                                  "teacher": "models/fmnist-standard.onnx"},
                                     "architecture": {"channels": [32, 64, 128]}})
    assert label == "distilled λ=0.2 60 ep wide 32-64-128"
    label = encoder_pareto.describe({"training": {"mode": "rrm", "lam": 0.2, "epochs": 20,
                                                  "teacher": "models/fmnist-standard.onnx"},
                                     "architecture": {"channels": [16, 32, 64], "layers": "aol",
                                                      "activation": "maxmin"}})
    assert label == "distilled λ=0.2 20 ep AOL maxmin"


def test_cli_writes_ledger_and_figure_and_marks_shipped(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    shipped = _card("s", 0.83, 0.2, mode="rrm", lam=0.2, epochs=60)
    (models / "enc.json").write_text(json.dumps({**shipped, "file": "enc.onnx"}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_card("o", 0.80, 0.17, mode="moco", lam=0.3, epochs=20)))
    ledger, figure = tmp_path / "ledger.json", tmp_path / "fig.png"
    args = ["--ledger", str(ledger), "--figure", str(figure), "--models-dir", str(models)]
    assert encoder_pareto.main([str(models / "enc.json"), str(other), *args]) == 0
    assert figure.stat().st_size > 1000
    assert "[enc.onnx]" in capsys.readouterr().out
    # a later call without the second card keeps its point
    assert encoder_pareto.main([str(models / "enc.json"), *args]) == 0
    assert {e["model_sha256"] for e in json.loads(ledger.read_text())["encoders"]} == {"s", "o"}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert encoder_pareto.main([str(bad), *args]) == 2
