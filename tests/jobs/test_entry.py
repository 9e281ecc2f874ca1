"""Job scripts end with a clear exit code: 0, 130 when interrupted (SIGTERM too), 2 with one error line."""

from __future__ import annotations

import os
import signal

import pytest

from jobs.entry import interrupt_on_sigterm, run_script
from reaas.datasets import DatasetError


def _raises(error: BaseException):
    def main() -> int:
        raise error
    return main


@pytest.mark.parametrize("error, code", [(ValueError("bad --num-test"), 2), (KeyboardInterrupt(), 130),
                                         (DatasetError("cifar10", "/nowhere", "file not found"), 2)])
def test_exit_codes(error, code, capsys):
    with pytest.raises(SystemExit) as info:
        run_script(_raises(error))
    assert info.value.code == code
    err = capsys.readouterr().err
    assert ("error: " in err) == (code == 2) and "Traceback" not in err


def test_success_exits_with_mains_code():
    with pytest.raises(SystemExit) as info:
        run_script(lambda: 0)
    assert info.value.code == 0


def test_sigterm_becomes_an_interrupt():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    finally:
        signal.signal(signal.SIGTERM, previous)
