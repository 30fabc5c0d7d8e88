"""How entry points end: a known error is one log line and exit code 2 (no traceback for a wrong path or key),
Ctrl-C (or ``kill``'s SIGTERM, the way a background run is stopped) is exit code 130 with a hint on resuming.
Unknown exceptions still raise: they are bugs to see in full."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from pointpeft.errors import PointPeftError

T = TypeVar("T")
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, so a background run stopped with ``kill`` unwinds as
    Ctrl-C does (finished work recorded, no half-written file) instead of dying at once. A no-op off the main
    thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_guarded(fn: Callable[[], T], log: logging.Logger, interrupted: str = "interrupted") -> tuple[T | None, int]:
    """``(fn(), 0)``, or ``(None, exit code)`` after logging a PointPeftError or an interrupt (Ctrl-C or SIGTERM)."""
    try:
        with sigterm_as_interrupt():
            return fn(), 0
    except PointPeftError as e:
        log.error("%s: %s", type(e).__name__, e)
        return None, EXIT_ERROR
    except KeyboardInterrupt:
        log.error("%s", interrupted)
        return None, EXIT_INTERRUPTED
