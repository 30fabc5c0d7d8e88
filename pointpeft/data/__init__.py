"""Data sets, transforms and loaders. Every data set is registered in :data:`pointpeft.registry.DATASETS` and
built from a config node by :func:`build_dataset`::

    build_dataset({"type": "modelnet40", "root": "datasets/ModelNet40", "split": "train", "npoints": 1024,
                   "transforms": [{"type": "scale_translate"}]})

``dataset[i]`` is ``(points FloatTensor (npoints, C), label int)``; ``dataset.classes``, ``dataset.num_classes``
and ``dataset.labels`` (all labels, numpy) describe it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from pointpeft.config import Config
from pointpeft.data import fewshot, modelnet40, scanobjectnn, shapenet55, subset, synthetic, transforms  # noqa: F401
from pointpeft.data.base import PointCloudDataset, pc_normalize
from pointpeft.data.fewshot import FewShot, generate_fewshot_folds
from pointpeft.data.loader import build_dataloader, seed_worker
from pointpeft.data.modelnet40 import ModelNet40
from pointpeft.data.scanobjectnn import ScanObjectNN
from pointpeft.data.shapenet55 import ShapeNet55
from pointpeft.data.synthetic import SyntheticShapes
from pointpeft.data.transforms import VoteAugmentation, build_transform, build_transforms
from pointpeft.errors import ConfigError
from pointpeft.registry import DATASETS, check_kwargs

__all__ = [
    "FewShot", "ModelNet40", "PointCloudDataset", "ScanObjectNN", "ShapeNet55", "SyntheticShapes",
    "VoteAugmentation", "build_dataloader", "build_dataset", "build_transform", "build_transforms",
    "generate_fewshot_folds", "pc_normalize", "seed_worker",
]

_OPTIONAL_MODULES = ("pointpeft.data.vision",)  # registers image data sets when present


def _import_optional() -> None:
    for name in _OPTIONAL_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def _find_section(cfg: Mapping[str, Any], node: Mapping[str, Any], prefix: str = "") -> str | None:
    """The dotted path of ``node`` inside ``cfg`` (by identity), to name the file that set a key."""
    for key, value in cfg.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if value is node:
            return path
        if isinstance(value, Mapping):
            found = _find_section(value, node, path)
            if found:
                return found
    return None


def build_dataset(node: Mapping[str, Any], cfg: Config | None = None, section: str | None = None) -> Dataset:
    """Build the data set named by ``node['type']`` with the other keys as arguments.

    An unknown key raises ConfigError naming it and, when ``cfg`` is given, the file that set it (``section`` is
    the node's dotted path in ``cfg``, found automatically when omitted).
    """
    if not isinstance(node, Mapping):
        raise ConfigError(f"a data set config must be a mapping with 'type', got {type(node).__name__}")
    params = dict(node)
    kind = params.pop("type", None) or params.pop("NAME", None)
    if cfg is not None and section is None:
        section = _find_section(cfg, node)
    where = ""
    if cfg is not None:
        where = f"{cfg.source_of(section) if section else cfg.source_of('data')}: "
    if kind is None:
        raise ConfigError(f"{where}data set config{f' {section!r}' if section else ''} needs a 'type' key "
                          f"(registered: {DATASETS.keys()})")
    if kind not in DATASETS:
        _import_optional()
    try:
        cls = DATASETS.get(kind)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    try:
        check_kwargs(cls, params, where=f"data set {kind!r}" + (f" ({section})" if section else ""))
    except ConfigError as e:
        if cfg is not None and section:
            bad = next(k for k in params if k not in inspect.signature(cls).parameters)
            where = f"{cfg.source_of(f'{section}.{bad}')}: "
        raise ConfigError(f"{where}{e}") from None
    try:
        return cls(**params)
    except ConfigError as e:
        raise ConfigError(f"{where}{section + ': ' if section else ''}{e}") from None
