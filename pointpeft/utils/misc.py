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
    """Configure the 'pointpeft' logger once: console (and optionally a file) with time stamps."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_pointpeft_console", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h._pointpeft_console = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
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
