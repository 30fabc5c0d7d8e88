"""``subset``: a class-balanced, seeded subset of any labelled data set, chosen in the config.

Budgeted runs (CPU sweeps, data-efficiency curves) train on ``per_class`` samples of each class of a real data set
instead of a different, easier one: ``{type: subset, per_class: 40, seed: 0, dataset: {type: modelnet40, ...}}``.

A validation split is carved out of the *training* split with ``skip``: the same seed draws the same per-class
order, and ``{per_class: 10, skip: 50}`` takes the 10 clouds after the 50 that ``{per_class: 50}`` trains on, so the
two never overlap (hyper-parameters are chosen on it, never on the test split).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pointpeft.data.base import check_positive_int
from pointpeft.errors import ConfigError
from pointpeft.registry import DATASETS


@DATASETS.register("subset")
class ClassBalancedSubset(Dataset):
    """At most ``per_class`` samples of every class (all of a smaller class), drawn with ``seed``, in index order;
    ``skip`` leaves out the first ``skip`` draws of each class (what a ``skip: 0`` subset of that size holds)."""

    def __init__(self, dataset: dict[str, Any], per_class: int, seed: int = 0, skip: int = 0) -> None:
        from pointpeft.data import build_dataset

        if not isinstance(dataset, dict):
            raise ConfigError(f"subset: 'dataset' must be a data set node with a type, got {type(dataset).__name__}")
        self.base = build_dataset(dataset)
        labels = getattr(self.base, "labels", None)
        if labels is None:
            raise ConfigError(f"subset: {type(self.base).__name__} has no labels to balance classes with")
        self.per_class = check_positive_int("per_class", per_class)
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            raise ConfigError(f"subset: 'skip' must be an integer >= 0, got {skip!r}")
        self.skip = skip
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        picks = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            picks.append(rng.permutation(idx)[skip : skip + self.per_class])
        self.indices = np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)
        self.labels = labels[self.indices]
        self.classes = list(getattr(self.base, "classes", [str(c) for c in range(int(labels.max()) + 1)]))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"ClassBalancedSubset(n={len(self)}, per_class={self.per_class}, skip={self.skip}, base={self.base!r})"
