"""Faults: kill -9 an encoder replica while features are fetched and again while certifying, restart the
perturb service mid-run; the edge client must finish with results identical to an undisturbed run.

Both runs use the local topology of ``make up`` (two encoder replicas behind client-side round_robin, one
perturb) and the edge client's workflow (``edge_client.workflow``: SDK retries on UNAVAILABLE, journaled
certification). Compared: the training features (their sha256), the trained MLP (``MLP.sha256``), and every
journal row except its timings.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

TIMING_FIELDS = frozenset({"seconds", "client_seconds", "service_seconds"})


@dataclass(frozen=True)
class FaultSettings:
    """Sizes of the client run and where the faults strike."""

    train_images: int = 2000
    evaluation_images: int = 30
    fetch_batch: int = 50  # images per Encode call while fetching training features
    certify_method: str = "bc-crown"
    perturb_method: str = "crown_ibp"
    kill_fetch_at: float = 0.3  # fraction of the fetch calls after which encoder-0 is killed
    kill_certify_at: float = 0.25  # fraction of the test rows after which encoder-1 is killed
    restart_perturb_at: float = 0.6  # fraction of the test rows after which perturb-0 restarts
    worker_row_delay_s: float = 0.0  # pause after each row in the killed client (widens the kill window)
    seed: int = 0


def journal_duplicates(path: Path) -> int:
    """Rows whose index already appeared earlier in the journal file (0 for a sound journal)."""
    seen, duplicates = set(), 0
    for line in Path(path).read_text().splitlines()[1:]:
        index = json.loads(line)["index"]
        duplicates += index in seen
        seen.add(index)
    return duplicates


def compare_rows(reference: list[dict], disturbed: list[dict]) -> dict:
    """Lost rows, extra rows and rows that differ in anything but their timings."""
    ref = {row["index"]: row for row in reference}
    got = {row["index"]: row for row in disturbed}

    def strip(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in TIMING_FIELDS}

    differing = [i for i in ref if i in got and strip(ref[i]) != strip(got[i])]
    return {
        "lost_rows": len(set(ref) - set(got)),
        "extra_rows": len(set(got) - set(ref)),
        "differing_rows": len(differing),
        "identical": not differing and set(ref) == set(got),
    }


class FaultPlan:
    """Fires each fault once when its phase reaches its step; records what happened and when."""

    def __init__(self, run_dir: Path, endpoints: dict, settings: FaultSettings, fetch_calls: int):
        self.run_dir, self.endpoints, self.settings = run_dir, endpoints, settings
        self.started = time.monotonic()
        self.events: list[dict] = []
        self._threads: list[threading.Thread] = []
        self._fetch_kill = max(1, int(settings.kill_fetch_at * fetch_calls))
        self._certify_kill = max(1, int(settings.kill_certify_at * settings.evaluation_images))
        self._perturb_restart = max(1, int(settings.restart_perturb_at * settings.evaluation_images))

    def _pid(self, name: str) -> int:
        for service in self.endpoints["services"].values():
            for replica in service["replicas"]:
                if replica["name"] == name:
                    return int(replica["pid"])
        raise KeyError(name)

    def _note(self, what: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.started, 2), "event": what})

    def _kill_soon(self, name: str, delay_s: float = 0.005) -> None:
        """SIGKILL ``name`` from another thread a moment later, so it dies with a call in flight."""
        pid = self._pid(name)

        def kill() -> None:
            time.sleep(delay_s)
            os.kill(pid, signal.SIGKILL)
            self._note(f"kill -9 {name} (pid {pid})")

        self._start(kill)

    def _restart(self, name: str, grace_s: float = 2.0) -> None:
        from deploy.local import restart

        def again() -> None:
            self._note(f"restart {name}: begin")
            self.endpoints = restart(self.run_dir, name, grace_s=grace_s)
            self._note(f"restart {name}: SERVING (pid {self._pid(name)})")

        self._start(again)

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def after_fetch_call(self, calls: int) -> None:
        """Hook after the ``calls``-th feature-fetch call."""
        if calls == self._fetch_kill:
            self._kill_soon("encoder-0")

    def after_fetch(self) -> None:
        """Hook once fetching is done: bring encoder-0 back for the certification phase."""
        self.wait()
        self._restart("encoder-0")
        self.wait()

    def after_row(self, rows: int) -> None:
        """Hook after the ``rows``-th certified test input."""
        if rows == self._certify_kill:
            self._kill_soon("encoder-1")
        if rows == self._perturb_restart:
            self._restart("perturb-0")

    def wait(self, timeout_s: float = 300.0) -> None:
        """Join every fault thread started so far."""
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()


def _clients(endpoints: dict, settings: FaultSettings):
    """Encoder and Perturb clients sharing one model pin, patient enough to outlast a restart."""
    from edge_client.sdk import RetryPolicy
    from edge_client.workflow import connect, endpoint_configs

    # ~60 s of backoff in all: longer than a replica needs to restart
    retry = RetryPolicy(max_attempts=40, initial_backoff_s=0.05, max_backoff_s=2.0)
    encoder, perturb = endpoint_configs(endpoints, timeout_s=120, retry=retry, jitter_seed=settings.seed)
    return connect(encoder, replace(perturb, jitter_seed=settings.seed + 1))


def certify(encoder, perturb, journal_path: Path, downstream, settings: FaultSettings,
            on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Certify the test prefix into ``journal_path`` (resuming whatever it already holds); all its rows."""
    from edge_client.certification import CertifyConfig
    from edge_client.workflow import certify_subset, evaluation_subset
    from reaas.datasets import DataSource

    config = CertifyConfig(method=settings.certify_method, perturb_method=settings.perturb_method,
                           seed=settings.seed)
    subset = evaluation_subset(DataSource(), settings.evaluation_images)
    return certify_subset(downstream, subset, encoder, perturb, config, journal_path, on_row=on_row).rows


def client_run(endpoints: dict, journal_path: Path, settings: FaultSettings, plan: FaultPlan | None) -> dict:
    """Fetch training features, train the MLP, certify the test prefix (journaled); what to compare."""
    from edge_client.training import TrainConfig
    from edge_client.workflow import DownstreamConfig, train_downstream
    from reaas.datasets import DataSource

    images, labels = DataSource().load("train")
    images, labels = images[: settings.train_images], labels[: settings.train_images]
    config = DownstreamConfig(noise_c_grid=(0.25,),
                              train=TrainConfig(hidden_widths=(64,), epochs=5, seed=settings.seed))
    done = {"fetch_calls": 0, "rows": 0}

    def on_fetch(fetched: int) -> None:
        done["fetch_calls"] += 1
        if plan is not None:
            plan.after_fetch_call(done["fetch_calls"])
            if fetched == len(images):
                plan.after_fetch()

    def on_row(row: dict) -> None:
        done["rows"] += 1
        if plan is not None:
            plan.after_row(done["rows"])

    encoder, perturb = _clients(endpoints, settings)
    with encoder, perturb:
        downstream = train_downstream(encoder, images, labels, config, num_classes=10,
                                      fetch_batch=settings.fetch_batch, on_fetch=on_fetch)
        downstream.save(journal_path.with_suffix(".mlp.npz"))
        rows = certify(encoder, perturb, journal_path, downstream, settings, on_row)
        if plan is not None:
            plan.wait()
        retries = encoder.usage.retries + perturb.usage.retries
    return {
        "features_sha256": downstream.features_sha256,
        "mlp_sha256": downstream.mlp.sha256,
        "rows": rows,
        "retries": retries,
        "journal": journal_path,
    }


def _journal_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_bytes().splitlines()) - 1)
    except OSError:
        return 0


def client_kill_run(
    endpoints_path: Path,
    journal_path: Path,
    mlp_path: Path,
    settings: FaultSettings,
    kill_at_rows: int,
    timeout_s: float = 900.0,
) -> dict:
    """Certify in a worker process, kill -9 it once ``kill_at_rows`` rows are journaled, resume; the rows."""
    import subprocess
    import sys

    from edge_client.workflow import Downstream

    argv = [
        sys.executable,
        "-m",
        "reliability.faults",
        "--endpoints",
        str(endpoints_path),
        "--journal",
        str(journal_path),
        "--mlp",
        str(mlp_path),
        "--settings",
        json.dumps(asdict(settings)),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
        ),
    }
    killed_at = None
    worker = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while worker.poll() is None and time.monotonic() < deadline:
        if _journal_rows(journal_path) >= kill_at_rows:
            worker.kill()  # SIGKILL: no chance to flush or clean up
            killed_at = _journal_rows(journal_path)
            break
        time.sleep(0.005)
    worker.wait(timeout=60)
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    if resumed.returncode != 0:
        raise RuntimeError(f"resumed certification worker failed:\n{resumed.stderr[-2000:]}")
    encoder, perturb = _clients(json.loads(endpoints_path.read_text()), settings)
    with encoder, perturb:
        # all rows done: no queries
        rows = certify(encoder, perturb, journal_path, Downstream.load(mlp_path), settings)
    return {"rows": rows, "killed_with_rows": killed_at, "journal": journal_path}


def run(model: Path, work_dir: Path, settings: FaultSettings, log: Callable[[str], None] = print) -> dict:
    """Undisturbed run, then a run under faults, on one ``make up`` topology; the comparison figures."""
    from deploy.local import down, up

    run_dir = (work_dir / "faults-topology").resolve()
    down(run_dir, grace_s=2.0)
    for stale in work_dir.glob("faults-*.jsonl*"):
        stale.unlink()
    started = time.perf_counter()
    endpoints = up(run_dir, model, encoder_replicas=2, grace_s=2.0, timeout_s=180.0)
    try:
        reference = client_run(endpoints, work_dir / "faults-reference.jsonl", settings, None)
        log(f"  undisturbed run: {len(reference['rows'])} rows, {reference['retries']} retries")
        fetch_calls = -(-settings.train_images // settings.fetch_batch)
        plan = FaultPlan(run_dir, endpoints, settings, fetch_calls)
        disturbed = client_run(endpoints, work_dir / "faults-disturbed.jsonl", settings, plan)
        log(
            f"  disturbed run: {len(disturbed['rows'])} rows, {disturbed['retries']} retries, "
            f"faults {[e['event'] for e in plan.events]}"
        )
        client = client_kill_run(
            run_dir / "endpoints.json",
            work_dir / "faults-client-kill.jsonl",
            work_dir / "faults-disturbed.mlp.npz",
            settings,
            max(1, settings.evaluation_images // 2),
        )
        log(
            f"  client killed with {client['killed_with_rows']} rows journaled, "
            f"resumed: {len(client['rows'])} rows"
        )
    finally:
        down(run_dir, grace_s=5.0)
    comparison = compare_rows(reference["rows"], disturbed["rows"])
    resumed = compare_rows(reference["rows"], client["rows"])
    report = {
        "fault_lost_rows": comparison["lost_rows"] + resumed["lost_rows"],
        "duplicates": journal_duplicates(disturbed["journal"]) + journal_duplicates(client["journal"]),
        "identical_results": bool(
            comparison["identical"]
            and resumed["identical"]
            and reference["features_sha256"] == disturbed["features_sha256"]
            and reference["mlp_sha256"] == disturbed["mlp_sha256"]
        ),
        "features_identical": reference["features_sha256"] == disturbed["features_sha256"],
        "mlp_identical": reference["mlp_sha256"] == disturbed["mlp_sha256"],
        "rows": len(disturbed["rows"]),
        "extra_rows": comparison["extra_rows"],
        "differing_rows": comparison["differing_rows"],
        "client_retries": disturbed["retries"],
        "faults": plan.events,
        "client_kill": {
            "killed_with_rows": client["killed_with_rows"],
            **resumed,
            "duplicates": journal_duplicates(client["journal"]),
        },
        "settings": asdict(settings),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return report


def _worker(argv: list[str] | None = None) -> int:
    """``python -m reliability.faults``: the certification worker ``client_kill_run`` kills and resumes."""
    import argparse

    from edge_client.workflow import Downstream

    parser = argparse.ArgumentParser(prog="python -m reliability.faults", description=_worker.__doc__)
    parser.add_argument("--endpoints", type=Path, required=True, help="endpoints.json of the topology")
    parser.add_argument("--journal", type=Path, required=True, help="journal to create or resume")
    parser.add_argument("--mlp", type=Path, required=True, help="downstream MLP .npz (+ its .json report)")
    parser.add_argument("--settings", required=True, help="FaultSettings as JSON")
    args = parser.parse_args(argv)
    settings = FaultSettings(**json.loads(args.settings))
    encoder, perturb = _clients(json.loads(args.endpoints.read_text()), settings)
    with encoder, perturb:
        certify(
            encoder,
            perturb,
            args.journal,
            Downstream.load(args.mlp),
            settings,
            on_row=lambda row: time.sleep(settings.worker_row_delay_s),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker())
