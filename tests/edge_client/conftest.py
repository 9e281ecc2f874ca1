"""Fixtures for edge-client tests: fake services on 127.0.0.1:0."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from edge_fakes import FakeState, create_fake_server, linear_state  # noqa: E402


@pytest.fixture
def fake_state() -> FakeState:
    return linear_state()


@pytest.fixture
def fake_target(fake_state):
    server, port = create_fake_server(fake_state)
    yield f"127.0.0.1:{port}"
    server.stop(None)
