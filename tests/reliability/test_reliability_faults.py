"""Faults, reduced: kill -9 of each encoder replica and a perturb restart leave results intact."""

from __future__ import annotations

import json

from reliability.faults import FaultSettings, compare_rows, journal_duplicates, run


def test_compare_rows_ignores_timings_only():
    ref = [{"index": 0, "radius": 0.1, "seconds": 1.0}, {"index": 20, "radius": 0.2, "seconds": 1.0}]
    same = [{"index": 0, "radius": 0.1, "seconds": 9.0}, {"index": 20, "radius": 0.2, "seconds": 3.0}]
    assert compare_rows(ref, same)["identical"]
    changed = compare_rows(ref, [{"index": 0, "radius": 0.1, "seconds": 1.0}, {"index": 20, "radius": 0.3}])
    assert changed["differing_rows"] == 1 and not changed["identical"]
    lost = compare_rows(ref, ref[:1])
    assert lost["lost_rows"] == 1 and not lost["identical"]


def test_journal_duplicates_counts_repeated_indices(tmp_path):
    path = tmp_path / "j.jsonl"
    lines = [{"header": {}}, {"index": 0}, {"index": 20}, {"index": 0}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert journal_duplicates(path) == 1


def test_kills_and_restarts_lose_nothing(stand_in_onnx, tmp_path):
    settings = FaultSettings(
        train_images=300,
        evaluation_images=6,
        fetch_batch=20,
        perturb_method="crown_ibp",
        worker_row_delay_s=0.2,
    )
    report = run(stand_in_onnx, tmp_path, settings, log=lambda _: None)
    events = [e["event"] for e in report["faults"]]
    assert any(e.startswith("kill -9 encoder-0") for e in events)
    assert any(e.startswith("kill -9 encoder-1") for e in events)
    assert any(e.startswith("restart perturb-0: SERVING") for e in events)
    assert report["fault_lost_rows"] == 0 and report["duplicates"] == 0 and report["extra_rows"] == 0
    assert report["identical_results"], report
    assert report["client_retries"] > 0  # the faults were felt, and absorbed by retries
    killed = report["client_kill"]
    assert killed["killed_with_rows"] is not None and killed["identical"] and killed["duplicates"] == 0
