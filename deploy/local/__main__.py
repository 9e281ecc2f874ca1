"""``python -m deploy.local {up,down,status,restart}``: the local topology of ``make up``/``make down``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy.local.topology import (
    DEFAULT_RUN_DIR,
    HEALTH_SERVICES,
    TopologyError,
    check_health,
    down,
    load_endpoints,
    restart,
    up,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="pid files, logs, endpoints.json")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the replicas and wait until all are SERVING",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    start.add_argument("--model", type=Path, default=Path("models/fmnist-robust.onnx"),
                       help="ONNX encoder (its model card beside it)")
    auth = start.add_mutually_exclusive_group()
    auth.add_argument("--api-key-file", type=Path, default=None,
                      help="API keys for the servers; default: a fresh random key in <run-dir>/api-keys.txt")
    auth.add_argument("--insecure-no-auth", action="store_true", help="serve without API keys")
    start.add_argument("--encoder-replicas", type=int, default=2, help="encoder servers behind round_robin")
    start.add_argument("--encoder-workers", type=int, default=2,
                       help="processes per encoder server on its port (--workers; SO_REUSEPORT)")
    start.add_argument("--base-port", type=int, default=0,
                       help="encoders on base, base+1, ..., perturb next, metrics at +100; 0 = free ports")
    start.add_argument("--intra-op-threads", type=int, default=1, help="compute threads per server")
    start.add_argument("--grace-s", type=float, default=5.0, help="servers' SIGTERM drain grace")
    start.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for SERVING")
    stop = commands.add_parser("down", help="SIGTERM every replica, SIGKILL after the grace")
    stop.add_argument("--grace-s", type=float, default=10.0)
    commands.add_parser("status", help="print each replica's pid and health")
    again = commands.add_parser("restart", help="restart one replica on its ports (e.g. perturb-0)")
    again.add_argument("name")
    again.add_argument("--grace-s", type=float, default=10.0)
    return parser


def _status(run_dir: Path) -> int:
    endpoints = load_endpoints(run_dir)
    healthy = True
    for service, info in endpoints["services"].items():
        for replica in info["replicas"]:
            ok = check_health(replica["address"], ["", HEALTH_SERVICES[service]])
            healthy &= ok
            print(f"{replica['name']:<12} pid {replica['pid']:<8} {replica['address']:<16} "
                  f"{'SERVING' if ok else 'NOT SERVING'}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; exit 1 with the reason when the topology cannot start."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            endpoints = up(args.run_dir, args.model, api_key_file=args.api_key_file,
                           insecure_no_auth=args.insecure_no_auth, encoder_replicas=args.encoder_replicas,
                           base_port=args.base_port, intra_op_threads=args.intra_op_threads,
                           encoder_workers=args.encoder_workers,
                           grace_s=args.grace_s, timeout_s=args.timeout_s)
            for service, info in endpoints["services"].items():
                print(f"{service}: {info['target']} ({info['lb_policy']})")
            print(f"endpoints: {Path(endpoints['run_dir']) / 'endpoints.json'}")
        elif args.command == "down":
            stopped = down(args.run_dir, args.grace_s)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            return _status(args.run_dir)
        else:
            endpoints = restart(args.run_dir, args.name, args.grace_s)
            print(json.dumps({"restarted": args.name}))
    except (TopologyError, FileNotFoundError) as exc:
        print(f"deploy.local {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
