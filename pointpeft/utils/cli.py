"""How entry points end: a known error is one log line and exit code 2 (no traceback for a wrong path or key),
Ctrl-C is exit code 130 with a hint on resuming. Unknown exceptions still raise: they are bugs to see in full."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pointpeft.errors import PointPeftError

T = TypeVar("T")
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def run_guarded(fn: Callable[[], T], log: logging.Logger, interrupted: str = "interrupted") -> tuple[T | None, int]:
    """``(fn(), 0)``, or ``(None, exit code)`` after logging a PointPeftError or an interrupt."""
    try:
        return fn(), 0
    except PointPeftError as e:
        log.error("%s: %s", type(e).__name__, e)
        return None, EXIT_ERROR
    except KeyboardInterrupt:
        log.error("%s", interrupted)
        return None, EXIT_INTERRUPTED
