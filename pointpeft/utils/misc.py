"""Seeding and logging set-up shared by every entry point."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch

LOGGER_NAME = "pointpeft"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def setup_logging(level: int = logging.INFO, log_file: str | os.PathLike | None = None) -> logging.Logger:
    """Configure the 'pointpeft' logger once: console (and optionally a file) with time stamps. ``level`` is the
    console's; a log file always gets INFO and up, so a ``--quiet`` run's folder still has its complete log."""
    logger = logging.getLogger(LOGGER_NAME)
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
    console = next((h for h in logger.handlers if getattr(h, "_pointpeft_console", False)), None)
    if console is None:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        console._pointpeft_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    console.setLevel(level)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        fh.setLevel(min(level, logging.INFO))
        logger.addHandler(fh)
    logger.setLevel(min(h.level or level for h in logger.handlers))
    logger.propagate = False
    return logger


def set_seed(seed: int, deterministic: bool = True) -> int:
    """Seed python, numpy and torch; on CPU this makes training bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
    return seed
