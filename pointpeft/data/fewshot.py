"""Few-shot ModelNet40 episodes in Point-BERT's layout: ``<root>/<way>way<shot>shot/<fold>.pkl`` (Point-MAE's code
spells the folder ``<way>way_<shot>shot``; both are read), each a dict ``{"train": [...], "test": [...]}`` of
``(points (N, 3+) array, label in 0..way-1, original label)`` tuples. Files are read only through the restricted
unpickler (numpy arrays and builtins), and :func:`generate_fewshot_folds` writes the same layout.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.data.base import (
    README_HINT,
    SAMPLINGS,
    PointCloudDataset,
    check_choice,
    check_finite,
    check_normalize,
    check_positive_int,
    logger,
    normalize_clouds,
    read_lines,
    resample_cloud,
    resolve_root,
)
from pointpeft.data.modelnet40 import MODELNET40_CLASSES
from pointpeft.data.transforms import TrainResampling
from pointpeft.errors import ConfigError, DataError
from pointpeft.registry import DATASETS
from pointpeft.utils.io import atomic_write_bytes, atomic_write_text
from pointpeft.utils.safe_pickle import safe_load

CLASS_NAMES_FILE = "class_names.txt"  # optional, beside the episode folders: names of the original labels


def episode_path(root: Path, way: int, shot: int, fold: int) -> Path:
    """The pickle of (way, shot, fold); both folder spellings are accepted."""
    for name in (f"{way}way{shot}shot", f"{way}way_{shot}shot"):
        path = root / name / f"{fold}.pkl"
        if path.is_file():
            return path
    raise DataError(f"few-shot episode not found: looked for {root}/{way}way{shot}shot/{fold}.pkl (and "
                    f"{way}way_{shot}shot/); generate it with datasets/prepare_fewshot.py; {README_HINT}")


@DATASETS.register("fewshot")
class FewShot(PointCloudDataset):
    """One few-shot episode: ``train`` = the support set (way x shot), ``test`` = the query set.

    Args:
        root: the ``ModelNetFewshot`` folder.
        way, shot, fold: which episode file.
        split: ``train`` (support) or ``test`` (query).
        npoints: points per cloud, chosen by ``sampling`` (fps | random | first) from the stored ones.
        use_normals: keep columns 3:6 (when the stored clouds have them).
        normalize: ``true`` (Point-MAE normalises every few-shot cloud), ``auto`` or ``false``.
        npoints_fps, fps_pool: support set: redraw the cloud at every fetch as Point-MAE's fine-tuning runner does
            (1200 for 1024 points); see :class:`~pointpeft.data.modelnet40.ModelNet40`.
    """

    def __init__(self, root: str | os.PathLike = "datasets/ModelNetFewshot", way: int = 5, shot: int = 10,
                 fold: int = 0, split: str = "train", npoints: int = 1024, sampling: str = "fps",
                 use_normals: bool = False, normalize: bool | str = True, seed: int = 0,
                 npoints_fps: int | None = None, fps_pool: str = "per_item", transforms: Any = None) -> None:
        check_choice("split", split, ("train", "test"))
        check_choice("sampling", sampling, SAMPLINGS)
        self.way, self.shot, self.fold = (check_positive_int("way", way), check_positive_int("shot", shot),
                                          int(fold))
        self.split, self.sampling, self.seed = split, sampling, int(seed)
        self.npoints = check_positive_int("npoints", npoints)
        self.resampling = TrainResampling(self.npoints, npoints_fps, fps_pool)
        self.normalize = check_normalize(normalize)
        self.channels = 6 if use_normals else 3
        root_path = resolve_root(root)
        path = episode_path(root_path, self.way, self.shot, self.fold)
        obj = safe_load(path)
        if not isinstance(obj, dict) or split not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{path}: expected a dict with 'train' and 'test' lists, got {keys}")
        items = obj[split]
        if not isinstance(items, (list, tuple)) or not items:
            raise DataError(f"{path}: field {split!r} must be a non-empty list of (points, label, original label)")
        points: np.ndarray | None = None
        labels = np.empty(len(items), dtype=np.int64)
        originals = np.empty(len(items), dtype=np.int64)
        for i, item in enumerate(items):
            pts, lab, orig = self._check_item(item, path, split, i)
            check_finite(pts, f"{path} [{split}]", offset=i)
            pts = normalize_clouds(pts, self.normalize)
            keep = self.resampling.keep(len(pts))
            if points is None:
                points = np.empty((len(items), keep, self.channels), dtype=np.float32)
            elif keep != points.shape[1]:
                raise DataError(f"{path}: {split}[{i}] has {len(pts)} points, {split}[0] another count; "
                                "npoints_fps with fps_pool=per_item needs clouds of one size (use fps_pool: cached)")
            points[i] = resample_cloud(pts, keep, sampling, self.seed, i, f"{path} [{split}]")
            labels[i], originals[i] = lab, orig
        self.original_labels = originals
        classes = self._class_names(root_path, labels, originals, path)
        super().__init__(classes, labels, self.resampling.transforms(transforms), points, source=str(path))
        logger.info("few-shot %dway%dshot fold %d %s: %d clouds (%s)", self.way, self.shot, self.fold, split,
                    len(self), path)

    def _check_item(self, item: Any, path: Path, split: str, i: int) -> tuple[np.ndarray, int, int]:
        where = f"{path}: {split}[{i}]"
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            raise DataError(f"{where} must be a (points, label, original label) tuple")
        pts = item[0]
        if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < self.channels:
            raise DataError(f"{where}: points have shape {getattr(pts, 'shape', None)}, expected (N, "
                            f"{self.channels}+)")
        try:
            lab = int(np.asarray(item[1]).reshape(-1)[0])
            orig = int(np.asarray(item[2]).reshape(-1)[0]) if len(item) > 2 else lab
        except (TypeError, ValueError, IndexError):
            raise DataError(f"{where}: label {item[1]!r} is not an integer") from None
        if not 0 <= lab < self.way:
            raise DataError(f"{where}: label {lab} is outside 0..{self.way - 1} for a {self.way}-way episode")
        return pts[:, : self.channels].astype(np.float32), lab, orig

    def _class_names(self, root: Path, labels: np.ndarray, originals: np.ndarray, path: Path) -> list[str]:
        names_file = root / CLASS_NAMES_FILE
        source_names = read_lines(names_file) if names_file.is_file() else MODELNET40_CLASSES
        classes = [f"class_{k}" for k in range(self.way)]
        for k in range(self.way):
            orig = originals[labels == k]
            if len(orig) and len(set(orig.tolist())) > 1:
                raise DataError(f"{path}: label {k} maps to several original labels {sorted(set(orig.tolist()))}")
            if len(orig) and 0 <= orig[0] < len(source_names):
                classes[k] = source_names[int(orig[0])]
        return classes


# -- generation ------------------------------------------------------------------------------------------------

def _source_points(dataset: Dataset, index: int) -> np.ndarray:
    if hasattr(dataset, "get_points"):
        return np.asarray(dataset.get_points(index), dtype=np.float32)
    pts = dataset[index][0]
    return (pts.numpy() if isinstance(pts, torch.Tensor) else np.asarray(pts)).astype(np.float32)


def _labels_of(dataset: Dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


def generate_fewshot_folds(dataset: Dataset, way: int, shot: int, folds: int = 10, query_per_class: int = 20,
                           seed: int = 0, out_dir: str | os.PathLike = "datasets/ModelNetFewshot",
                           query_dataset: Dataset | None = None,
                           class_names: Sequence[str] | None = None) -> list[Path]:
    """Write ``out_dir/<way>way<shot>shot/<fold>.pkl`` for ``fold`` in 0..folds-1, Point-BERT's layout.

    Each fold draws ``way`` classes, then ``shot`` support and ``query_per_class`` query clouds per class, all
    distinct. Queries come from ``query_dataset`` when given (Point-BERT: support from train, queries from test),
    else from the remaining clouds of ``dataset``. Deterministic in ``(seed, way, shot, fold)``; the pickles hold
    only float32 numpy arrays and Python ints, so :func:`pointpeft.utils.safe_pickle.safe_load` reads them.
    """
    way, shot = check_positive_int("way", way), check_positive_int("shot", shot)
    folds, query_per_class = check_positive_int("folds", folds), check_positive_int("query_per_class",
                                                                                     query_per_class)
    labels = _labels_of(dataset)
    q_labels = _labels_of(query_dataset) if query_dataset is not None else labels
    need_support = shot if query_dataset is not None else shot + query_per_class
    eligible = [c for c in np.unique(labels).tolist()
                if (labels == c).sum() >= need_support and (q_labels == c).sum() >= query_per_class]
    if len(eligible) < way:
        raise ConfigError(f"only {len(eligible)} classes have >= {need_support} support and {query_per_class} "
                          f"query clouds; cannot make {way}-way episodes")
    folder = Path(out_dir).expanduser().resolve() / f"{way}way{shot}shot"
    paths = []
    for fold in range(folds):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), way, shot, fold]))
        chosen = rng.choice(eligible, size=way, replace=False)
        support, query = [], []
        for new_label, orig in enumerate(chosen.tolist()):
            idx = rng.permutation(np.flatnonzero(labels == orig))
            support += [(_source_points(dataset, int(i)), new_label, int(orig)) for i in idx[:shot]]
            if query_dataset is None:
                q_idx = idx[shot : shot + query_per_class]
                query += [(_source_points(dataset, int(i)), new_label, int(orig)) for i in q_idx]
            else:
                q_idx = rng.permutation(np.flatnonzero(q_labels == orig))[:query_per_class]
                query += [(_source_points(query_dataset, int(i)), new_label, int(orig)) for i in q_idx]
        support = [support[i] for i in rng.permutation(len(support))]
        query = [query[i] for i in rng.permutation(len(query))]
        path = folder / f"{fold}.pkl"
        atomic_write_bytes(path, pickle.dumps({"train": support, "test": query}, protocol=4))
        paths.append(path)
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    if names:
        atomic_write_text(Path(out_dir).expanduser().resolve() / CLASS_NAMES_FILE, "\n".join(names) + "\n")
    logger.info("wrote %d %d-way %d-shot folds to %s", folds, way, shot, folder)
    return paths
