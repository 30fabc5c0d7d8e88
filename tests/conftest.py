"""Shared fixtures: tiny models, seeded clouds, and access to the real ModelNet40 in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POINTPEFT_SHARED_DATA", REPO.parent / "shared" / "data"))
MODELNET_H5 = SHARED_DATA / "modelnet40_ply_hdf5_1024"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def modelnet_h5_root() -> Path:
    """The real ModelNet40 HDF5 folder; required under CI=true, skipped with a reason otherwise."""
    if not (MODELNET_H5 / "train_files.txt").is_file():
        msg = f"real ModelNet40 not found at {MODELNET_H5} (set POINTPEFT_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — required when CI=true")
        pytest.skip(msg)
    return MODELNET_H5


@pytest.fixture
def rand_cloud() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 256, 3, generator=g) * 2 - 1
