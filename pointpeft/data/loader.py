"""DataLoaders with reproducible shuffling and per-worker seeding (the same run twice gives the same batches)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pointpeft.errors import ConfigError


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the torch seed the loader gave it (torch's own is already set
    to ``base_seed + worker_id``, and base_seed comes from the loader's seeded generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_dataloader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, seed: int = 0,
                     drop_last: bool = False, distributed: bool = False) -> DataLoader:
    """A DataLoader whose order and worker RNG depend only on ``seed`` (and, when distributed, the epoch set with
    ``loader.sampler.set_epoch(epoch)``). Batches are ``(points (B, N, C), labels (B,))``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=int(seed), drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
