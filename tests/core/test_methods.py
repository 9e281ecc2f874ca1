"""One method table: every front end offers exactly the methods the server accepts."""

from __future__ import annotations

import argparse

import pytest

from reaas.methods import BOUND_METHODS, METHOD_NAMES, PERTURB_METHODS, method_to_proto
from reaas.v1 import common_pb2


def _choices(parser: argparse.ArgumentParser, dest: str) -> set[str]:
    """Choices of ``dest`` in a parser or any of its sub-commands."""
    found: set[str] = set()
    for action in parser._actions:
        if action.dest == dest and action.choices:
            found |= set(action.choices)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _choices(sub, dest)
    return found


def test_the_table_covers_every_proto_method_once():
    assert set(PERTURB_METHODS.values()) == set(common_pb2.Method.values())
    assert {METHOD_NAMES[v] for v in common_pb2.Method.values()} == set(PERTURB_METHODS)
    assert "auto" not in BOUND_METHODS and len(BOUND_METHODS) == len(PERTURB_METHODS) - 1
    with pytest.raises(ValueError, match="local_lipschitz"):
        method_to_proto("lipshitz")


def test_every_cli_offers_every_method():
    from edge_client.cli import build_parser as edge_parser
    from jobs.bench import CHOICES
    from jobs.run import build_parser as run_parser

    assert _choices(edge_parser(), "perturb_method") == set(PERTURB_METHODS)
    assert _choices(run_parser(), "perturb_method") == set(PERTURB_METHODS)
    assert set(CHOICES["perturb_method"]) == set(CHOICES["curve_method"]) == set(PERTURB_METHODS)


def test_server_and_sdk_share_the_table():
    from edge_client import sdk
    from services.perturb import server, validation
    from services.perturb.engine.engine import METHODS

    assert sdk._METHODS is PERTURB_METHODS and server.PERTURB_METHODS is PERTURB_METHODS
    assert validation.METHOD_NAMES is METHOD_NAMES
    assert tuple(METHODS) == BOUND_METHODS
