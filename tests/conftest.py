"""Suite-wide: every test runs torch on one thread, so results are reproducible and a test does not fight
the services it starts for the machine's (two, on CI) cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_torch_thread():
    try:
        import torch
    except ImportError:  # a torch-free install of the edge client
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
