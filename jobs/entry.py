"""How the jobs start and end as scripts: SIGTERM behaves like Ctrl-C (services stopped, journals kept, a
re-run resumes), and a caller's mistake (bad flag, missing data, mismatched encoder) is one error line with
exit code 2, not a traceback."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from reaas.datasets import DatasetError


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``with`` blocks stop the services on the way out."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def run_script(main: Callable[[], int]) -> None:
    """Run ``main`` and exit: its code, 130 when interrupted, 2 on a caller's mistake."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("\ninterrupted: services stopped; re-run to resume from the journals", file=sys.stderr)
        sys.exit(130)
    except (ValueError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
