"""Container entrypoint: check the mounted model against its card (and an optional pin), then exec the server.

    python -m deploy.model_check -- python -m services.encoder

The model is ``--model`` or ``$REAAS_MODEL``; its card is the ``.json`` beside it and must name the file's
``model_sha256``. ``--expect-sha256`` / ``$REAAS_MODEL_SHA256`` (empty = no pin) pins the exact encoder a
deployment may serve, so a pod with the wrong file fails to start and the rollout stops. The API-key file
(``$REAAS_API_KEY_FILE``) must not still hold the manifests' ``REPLACE-ME`` placeholder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.common.model_file import sha256_of

PLACEHOLDER_KEY_PREFIX = "REPLACE-ME"


class ModelCheckError(RuntimeError):
    """The model, its card, the pin or the key file would make the server serve the wrong thing."""


def check_model(model: Path, expect_sha256: str = "") -> str:
    """The model's sha256, checked against its card's ``model_sha256`` (and ``expect_sha256`` when set)."""
    model = Path(model)
    if not model.is_file():
        raise ModelCheckError(f"model file {model} not found")
    card_path = model.with_suffix(".json")
    if not card_path.is_file():
        raise ModelCheckError(f"model card {card_path} not found")
    try:
        pinned = json.loads(card_path.read_text()).get("model_sha256", "")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelCheckError(f"model card {card_path} is not a JSON object: {exc}") from exc
    if not pinned:
        raise ModelCheckError(f"model card {card_path} has no model_sha256")
    actual = sha256_of(model)
    if actual != pinned.lower():
        raise ModelCheckError(f"{model} hashes to {actual} but its card {card_path} names {pinned}")
    if expect_sha256 and actual != expect_sha256.strip().lower():
        raise ModelCheckError(f"{model} hashes to {actual} but this deployment pins {expect_sha256}")
    return actual


def check_api_keys(path: Path) -> None:
    """Refuse a key file that still holds the placeholder key shipped in deploy/k8s/base/secret.yaml."""
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[1].startswith(PLACEHOLDER_KEY_PREFIX):
            raise ModelCheckError(f"{path}:{number}: placeholder API key; create the reaas-api-keys Secret "
                                  "with real keys (deploy/README.md)")


def main(argv: list[str] | None = None) -> int:
    """Run the checks; exec the command after ``--`` when they pass, exit 1 with the reason when not."""
    parser = argparse.ArgumentParser(prog="python -m deploy.model_check", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("REAAS_MODEL", ""), help="[env REAAS_MODEL]")
    parser.add_argument("--expect-sha256", default=os.environ.get("REAAS_MODEL_SHA256", ""),
                        help="pinned sha256; empty = trust the card [env REAAS_MODEL_SHA256]")
    parser.add_argument("--api-key-file", default=os.environ.get("REAAS_API_KEY_FILE", ""),
                        help="[env REAAS_API_KEY_FILE]")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- program and arguments to exec")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.model:
        parser.error("no model: pass --model or set REAAS_MODEL")
    try:
        sha256 = check_model(Path(args.model), args.expect_sha256)
        if args.api_key_file:
            check_api_keys(Path(args.api_key_file))
    except (ModelCheckError, OSError) as exc:
        print(f"model_check: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"model_check: {args.model} sha256 {sha256} matches its card"
          f"{' and the pin' if args.expect_sha256 else ''}", file=sys.stderr, flush=True)
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
