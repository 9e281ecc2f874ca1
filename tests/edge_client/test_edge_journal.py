"""Journal and resume: a run SIGKILLed mid-certification resumes with no lost or repeated rows or queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from edge_fakes import create_fake_server, linear_state, small_problem

from edge_client.certification import CertifyConfig, journal_header, run_certification
from edge_client.journal import Journal, JournalError
from edge_client.metrics import summarize
from edge_client.sdk import ClientConfig
from edge_client.workflow import connect

_TIMING = ("client_seconds", "seconds", "service_seconds")


def _run(journal_path: Path, config: CertifyConfig):
    """Certify the small problem against fresh fake services; returns (rows, images queried by the server)."""
    images, labels, model = small_problem()
    state = linear_state()
    server, port = create_fake_server(state)
    try:
        encoder, perturb = connect(ClientConfig(f"127.0.0.1:{port}"))
        indices = list(range(len(labels)))
        encoder.model_info()
        journal = Journal(journal_path, journal_header(config, encoder.pin.sha256, model, "fake"))
        rows = run_certification(journal, indices, images, labels, model, encoder, perturb, config)
    finally:
        server.stop(None)
    served = sum(r.images.shape[0] for m, r, _ in state.requests if m in ("Encode", "F2IPerturb",
                                                                          "F2IPerturbCurve"))
    return rows, served


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]


@pytest.mark.parametrize("method", ["sc", "sc-curve", "bc-crown"])
def test_killed_run_resumes_without_lost_or_repeated_rows(tmp_path, method):
    config = CertifyConfig(method=method, n=2_000, noise_c=0.5, seed=3)
    full_rows, full_served = _run(tmp_path / "full.jsonl", config)
    assert len(full_rows) == 12

    killed = tmp_path / "killed.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]))
    worker = Path(__file__).with_name("resume_worker.py")
    proc = subprocess.run([sys.executable, str(worker), str(killed), json.dumps(asdict(config)), "5"],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    lines = killed.read_text().splitlines()
    assert len(lines) == 1 + 5
    with open(killed, "a") as handle:  # a kill in the middle of a write leaves a torn last line
        handle.write('{"index": 99, "lab')

    resumed_rows, resumed_served = _run(killed, config)
    assert [r["index"] for r in resumed_rows] == list(range(12))
    assert _strip(resumed_rows) == _strip(full_rows)
    done_queries = sum(r["queries"] for r in resumed_rows[:5])
    assert resumed_served == full_served - done_queries  # nothing done before the kill is queried again
    file_rows = [json.loads(line) for line in killed.read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in file_rows) == list(range(12))  # no duplicates, torn line gone
    drop = {"client_seconds_per_test_input", "service_seconds_per_test_input"}
    assert ({k: v for k, v in summarize(resumed_rows).items() if k not in drop}
            == {k: v for k, v in summarize(full_rows).items() if k not in drop})


def test_queries_per_test_input(tmp_path):
    rows, _ = _run(tmp_path / "sc.jsonl", CertifyConfig(method="sc", n=2_000, noise_c=0.5))
    assert all(r["queries"] == (2 if r["feature_radius"] > 0 else 1) for r in rows)
    rows, _ = _run(tmp_path / "curve.jsonl", CertifyConfig(method="sc-curve", n=2_000, noise_c=0.5))
    assert all(r["queries"] == 1 for r in rows)
    assert all(r["bytes"] > 0 for r in rows)


def test_resume_with_another_configuration_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    Journal(path, {"a": 1}).append({"index": 0, "x": 1})
    with pytest.raises(JournalError):
        Journal(path, {"a": 2})
    journal = Journal(path, {"a": 1})
    assert journal.done == {0}
    with pytest.raises(JournalError):
        journal.append({"index": 0})


def test_a_longer_prefix_reuses_the_rows_of_a_shorter_run(tmp_path):
    config = CertifyConfig(method="sc", n=1_000, noise_c=0.5)
    images, labels, model = small_problem()
    state = linear_state()
    server, port = create_fake_server(state)
    try:
        encoder, perturb = connect(ClientConfig(f"127.0.0.1:{port}"))
        encoder.model_info()
        journal = Journal(tmp_path / "j.jsonl", journal_header(config, encoder.pin.sha256, model, "fake"))
        short = run_certification(journal, [0, 1, 2], images[:3], labels[:3], model, encoder, perturb, config)
        served = encoder.usage.queries
        longer = run_certification(journal, list(range(6)), images[:6], labels[:6], model, encoder, perturb,
                                   config)
        assert encoder.usage.queries - served == 3  # only the three new inputs are encoded
        assert longer[:3] == short and [r["index"] for r in longer] == list(range(6))
        again = run_certification(journal, [0, 1], images[:2], labels[:2], model, encoder, perturb, config)
        assert again == short[:2]
    finally:
        server.stop(None)


def test_keyed_journals_resume_their_own_configuration(tmp_path):
    first = Journal.keyed(tmp_path, "sc", {"n": 100, "sigma": 0.5})
    first.append({"index": 3, "radius": 0.1})
    again = Journal.keyed(tmp_path, "sc", {"sigma": 0.5, "n": 100})  # key order does not matter
    assert again.path == first.path and again.done == {3}
    other = Journal.keyed(tmp_path, "sc", {"n": 200, "sigma": 0.5})
    assert other.path != first.path and other.done == set() and other.path.name.startswith("sc-")
