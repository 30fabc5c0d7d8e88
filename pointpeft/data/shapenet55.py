"""ShapeNet-55 as Point-BERT/Point-MAE ship it, for pretraining: ``shapenet_pc/<synset>-<model>.npy`` (8192, 3)
and ``train.txt`` / ``test.txt`` listing those file names (in the root or in ``ShapeNet-55/``).

The 52k clouds (~4 GB as float32) do not fit comfortably in memory, so each item is read on access; with
``sampling: random`` the subset of ``npoints`` is drawn from ``(seed, index)`` (deterministic). The label is the
index of the synset among the sorted synsets of both list files (unused by MAE pretraining).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pointpeft.data.base import (
    README_HINT,
    SAMPLINGS,
    PointCloudDataset,
    check_choice,
    check_finite,
    check_normalize,
    check_positive_int,
    logger,
    missing_root_error,
    normalize_clouds,
    read_lines,
    resample_cloud,
    resolve_root,
)
from pointpeft.errors import DataError
from pointpeft.registry import DATASETS

EXPECTED = "shapenet_pc/<synset>-<model>.npy with train.txt/test.txt in the root or in ShapeNet-55/"


def _list_file(root: Path, split: str) -> Path | None:
    for folder in (root, root / "ShapeNet-55"):
        if (folder / f"{split}.txt").is_file():
            return folder / f"{split}.txt"
    return None


@DATASETS.register("shapenet55")
class ShapeNet55(PointCloudDataset):
    """ShapeNet-55 clouds: ``(points (npoints, 3), synset index)``.

    Args:
        root: folder holding ``shapenet_pc/`` and the list files.
        split: ``train`` or ``test``.
        npoints: points per cloud (<= the 8192 stored).
        sampling: ``random`` (Point-MAE's choice, seeded per index), ``fps`` or ``first``.
        normalize: ``true`` (Point-MAE's pc_norm), ``auto`` or ``false``.
    """

    def __init__(self, root: str | os.PathLike = "datasets/ShapeNet55", split: str = "train", npoints: int = 8192,
                 sampling: str = "random", normalize: bool | str = True, seed: int = 0,
                 transforms: Any = None) -> None:
        check_choice("split", split, ("train", "test"))
        check_choice("sampling", sampling, SAMPLINGS)
        self.split, self.sampling, self.seed = split, sampling, int(seed)
        self.npoints = check_positive_int("npoints", npoints)
        self.normalize = check_normalize(normalize)
        root_path = resolve_root(root)
        self.pc_dir = root_path / "shapenet_pc"
        list_file = _list_file(root_path, split)
        if not root_path.exists() or not self.pc_dir.is_dir() or list_file is None:
            raise missing_root_error("ShapeNet-55", root_path, EXPECTED)
        names = read_lines(list_file)
        if not names:
            raise DataError(f"{list_file}: lists no clouds")
        synsets = set()
        for other in ("train", "test"):
            f = _list_file(root_path, other)
            if f is not None:
                synsets.update(n.split("-", 1)[0] for n in read_lines(f))
        classes = sorted(synsets)
        index = {s: i for i, s in enumerate(classes)}
        for lineno, name in enumerate(names, 1):
            if "-" not in name:
                raise DataError(f"{list_file} line {lineno}: {name!r} is not '<synset>-<model>.npy'")
        labels = np.array([index[n.split("-", 1)[0]] for n in names], dtype=np.int64)
        self.files = [self.pc_dir / (n if n.endswith(".npy") else f"{n}.npy") for n in names]
        missing = next((f for f in self.files if not f.is_file()), None)
        if missing is not None:
            raise DataError(f"{list_file}: lists {missing.name}, but {missing} does not exist; {README_HINT}")
        super().__init__(classes, labels, transforms, None, source=str(list_file))
        logger.info("ShapeNet-55 %s: %d clouds, %d synsets (%s)", split, len(self), len(classes), root_path)

    def get_points(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            pts = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable .npy cloud ({e})") from None
        if pts.ndim != 2 or pts.shape[1] < 3 or pts.dtype.kind not in "fiu":
            raise DataError(f"{path}: cloud has shape {pts.shape} / dtype {pts.dtype}, expected (N, 3) floats")
        pts = pts[:, :3].astype(np.float32)
        check_finite(pts, str(path), offset=index)
        pts = normalize_clouds(pts, self.normalize)
        return resample_cloud(pts, self.npoints, self.sampling, self.seed, index, str(path))
