"""``python -m reliability``: run soundness, fuzz, security, faults and load checks; write one JSON report."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

SECTIONS = ("security", "fuzz", "faults", "load", "soundness")  # the long one last
# (full, --quick) sizes; every one can be overridden by its flag
SIZES = {
    "pairs": (1000, 40),
    "crown_pairs": (8, 2),
    "semantic_pairs": (40, 4),
    "classifier_images": (200, 40),
    "fuzz_cases": (10_000, 1_600),
    "load_clients": (64, 16),
    "load_seconds": (60.0, 10.0),
    "fault_train_images": (2000, 600),
    "fault_test_images": (30, 10),
}


def build_parser() -> argparse.ArgumentParser:
    """Flags of the suite; sizes default to the full run (or to the reduced one with --quick)."""
    parser = argparse.ArgumentParser(
        prog="python -m reliability",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("results/reliability.json"), help="report JSON")
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="ONNX encoder (repeatable); default: models/fmnist-robust.onnx and models/fmnist-standard.onnx "
        "when present, else a generated stand-in. Fuzz, security, faults and load use the first.",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs/reliability"), help="keys, journals, logs"
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes (minutes, not hours)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other sections of an existing --out report (rerun some sections only)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset to run")
    for name, (full, quick) in SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(full),
            default=None,
            help=f"full run {full}, --quick {quick}",
        )
    parser.add_argument("--attack-steps", type=int, default=100, help="PGD steps per restart")
    parser.add_argument("--attack-restarts", type=int, default=5, help="PGD random restarts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _size(args, name: str):
    value = getattr(args, name)
    return value if value is not None else SIZES[name][1 if args.quick else 0]


def goals(report: dict, quick: bool) -> dict[str, bool | None]:
    """Each goal of issue 9 that the sections run could check: True met, False missed, None not measured.

    None (a skipped probe, an unreadable memory figure) is not a pass: :func:`goals_met` needs every goal
    True.
    """
    checks: dict[str, bool | None] = {}
    if "soundness" in report:
        checks["soundness_violations == 0"] = report["soundness_violations"] == 0
        checks["classifier_violations == 0"] = report["classifier_violations"] == 0
        if not quick:
            checks["pairs >= 1000 per encoder"] = all(
                sum(row["pairs"] for row in e["methods"].values()) >= 1000
                for e in report["soundness"]["encoders"].values()
            )
    if "fuzz" in report:
        checks["fuzz_internal_errors == 0"] = report["fuzz_internal_errors"] == 0
        checks["servers healthy after fuzzing"] = all(
            report["fuzz"][k]
            for k in ("encoder_serving", "perturb_serving", "encode_correct_after", "perturb_answers_after")
        )
        if not quick:
            checks["fuzz cases >= 10000"] = report["fuzz"]["fuzz_cases"] >= 10_000
    if "load" in report:
        checks["load_errors == 0"] = report["load_errors"] == 0
        growth = report["load"]["max_memory_growth"]  # None: some replica's RSS could not be read
        checks["memory growth 30 s -> 60 s <= 10%"] = None if growth is None else growth <= 0.10
    if "faults" in report:
        checks["fault_lost_rows == 0"] = report["fault_lost_rows"] == 0
        checks["no duplicated journal rows"] = report["faults"]["duplicates"] == 0
        checks["results identical to an undisturbed run"] = report["faults"]["identical_results"]
    if "security" in report:
        checks["every RPC needs a key (health, reflection, KServe liveness open)"] = report["security"][
            "auth"
        ]["every_rpc_needs_a_key"]
        checks["quota overrun: RESOURCE_EXHAUSTED with retry hint"] = report["security"]["quota"]["ok"]
        checks["TLS round-trip with a self-signed certificate"] = report["security"]["tls"]["ok"]
        oversize = report["security"]["oversize"]
        checks["oversize message rejected before allocation"] = (
            None if oversize.get("status") == "skipped" else oversize["ok"]
        )
    return checks


def goals_met(checks: dict[str, bool | None]) -> bool:
    """Every goal measured and met (a goal not measured is not met)."""
    return all(met is True for met in checks.values())


def goal_line(goal: str, met: bool | None) -> str:
    """``[x] goal``, ``[ ] goal`` or, when it could not be measured, ``[?] goal: NOT MEASURED``."""
    if met is None:
        return f"  [?] {goal}: NOT MEASURED (skipped or unreadable; not a pass)"
    return f"  [{'x' if met else ' '}] {goal}"


# section -> (top-level name, the section's key): figures of issue 9 lifted to the top of the report
_HEADLINE = {
    "soundness": (
        ("soundness_violations", "soundness_violations"),
        ("classifier_violations", "classifier_violations"),
        ("attack_reach", "attack_reach"),
        ("soundness_pairs", "pairs"),
    ),
    "fuzz": (("fuzz_internal_errors", "fuzz_internal_errors"), ("fuzz_cases", "fuzz_cases")),
    "load": (("load_errors", "load_errors"),),
    "faults": (
        ("fault_lost_rows", "fault_lost_rows"),
        ("duplicates", "duplicates"),
        ("identical_results", "identical_results"),
    ),
    "security": (("security_ok", "ok"),),
}


def _headline(report: dict) -> dict:
    """The figures of issue 9 at the top level of the report."""
    out = {
        name: report[section][key]
        for section, names in _HEADLINE.items()
        if section in report
        for name, key in names
    }
    if "load" in report:
        for service in ("encoder", "perturb"):
            figures = report["load"][service]
            out[f"load_{service}_p50_ms"] = figures["p50_ms"]
            out[f"load_{service}_p99_ms"] = figures["p99_ms"]
            out[f"load_{service}_memory_growth"] = figures["max_memory_growth"]
    if "security" in report:
        out["security_skipped"] = report["security"].get("skipped", [])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print progress and figures, write the report; 1 when a goal is missed."""
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from reliability import faults, fuzz, load, security, soundness
    from reliability.common import export_stand_in_encoder, shipped_models

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    models = [m.resolve() for m in (args.model or shipped_models())]
    note = ""
    if not models:
        models = [export_stand_in_encoder(args.work_dir.resolve() / "stand-in.onnx", seed=args.seed)]
        note = "no shipped model found: a generated, untrained stand-in encoder was used"
        print(f"warning: {note}", file=sys.stderr)
    started = time.perf_counter()
    previous = json.loads(args.out.read_text()) if args.update and args.out.is_file() else {}
    report: dict = {k: previous[k] for k in (*SECTIONS, "section_seconds") if k in previous}
    if previous:
        report["earlier_commands"] = [*previous.get("earlier_commands", []), previous.get("command")]
    report.update(
        {
            "command": "python -m reliability " + " ".join(argv if argv is not None else sys.argv[1:]),
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "models": [str(m) for m in models],
            "models_note": note,
            "torch_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "seed": args.seed,
        }
    )

    def save() -> None:
        report.update(_headline(report))
        report["goals"] = goals(report, args.quick)
        report["goals_met"] = goals_met(report["goals"])
        report["goals_not_measured"] = [goal for goal, met in report["goals"].items() if met is None]
        report["duration_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
        tmp.replace(args.out)

    attack = soundness.AttackSettings(steps=args.attack_steps, restarts=args.attack_restarts, seed=args.seed)
    for section in sections:
        print(f"== {section}", flush=True)
        t0 = time.perf_counter()
        if section == "soundness":
            settings = soundness.SoundnessSettings(
                pairs=_size(args, "pairs"),
                crown_pairs=_size(args, "crown_pairs"),
                semantic_pairs=_size(args, "semantic_pairs"),
                classifier_images=_size(args, "classifier_images"),
                attack=attack,
                seed=args.seed,
            )
            if args.quick:
                settings = replace(settings, classifier_train_images=2000)
            report["soundness"] = soundness.run(models, settings)
        elif section == "fuzz":
            per_family = -(-_size(args, "fuzz_cases") // fuzz.FAMILIES)
            report["fuzz"] = fuzz.run(models[0], args.work_dir, fuzz.FuzzSettings(per_family, seed=args.seed))
        elif section == "security":
            report["security"] = security.run(models[0], args.work_dir)
        elif section == "faults":
            settings = faults.FaultSettings(
                train_images=_size(args, "fault_train_images"),
                evaluation_images=_size(args, "fault_test_images"),
                seed=args.seed,
            )
            report["faults"] = faults.run(models[0], args.work_dir, settings)
        else:
            settings = load.LoadSettings(
                clients=_size(args, "load_clients"), seconds=_size(args, "load_seconds"), seed=args.seed
            )
            report["load"] = load.run(models[0], args.work_dir, settings)
        report.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
        save()
    save()
    print(json.dumps({k: report[k] for k in _headline(report)}, indent=2))
    for goal, met in report["goals"].items():
        print(goal_line(goal, met))
    print(f"wrote {args.out} in {report['duration_s']:.0f} s")
    return 0 if report["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
