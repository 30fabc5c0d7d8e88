"""The released checkpoints' key lists (tests/fixtures/*.keys): name -> (shape, dtype), in state-dict order.

The lists were written from the published architectures (Pang-Yatian/Point-MAE models/Point_MAE.py,
lulutang0608/Point-BERT models/Point_BERT.py and models/dvae.py with their released configs), never from
pointpeft's models, so tests built on them notice a renamed or reshaped key in ours."""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def read_keys(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) from ``tests/fixtures/<name>.keys`` (lines ``name 1x1x384 float32``; ``-``: scalar)."""
    out = {}
    for line in (FIXTURES / f"{name}.keys").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype = line.split()
        out[key] = (tuple(int(s) for s in shape.split("x")) if shape != "-" else (), getattr(torch, dtype))
    return out
