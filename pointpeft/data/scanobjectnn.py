"""ScanObjectNN (Uy et al., ICCV 2019): real scans of 15 object classes, in its official HDF5 files.

``variant``: ``obj_bg`` (``main_split/{training,test}_objectdataset.h5``), ``obj_only``
(``main_split_nobg/...``) and ``hardest`` = PB_T50_RS (``main_split/{training,test}_objectdataset_augmentedrot_
scale75.h5``). Each file holds ``data`` (M, 2048, 3) and ``label`` (M,). Like Point-MAE, clouds are not renormalised
by default (the files are already centred and scaled); ``normalize: auto|true`` changes that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pointpeft.data.base import (
    README_HINT,
    SAMPLINGS,
    PointCloudDataset,
    check_choice,
    check_cloud_array,
    check_finite,
    check_label_array,
    check_labels,
    check_normalize,
    check_positive_int,
    logger,
    missing_root_error,
    normalize_clouds,
    read_h5,
    resample_clouds,
    resolve_root,
)
from pointpeft.data.transforms import TrainResampling
from pointpeft.errors import DataError
from pointpeft.registry import DATASETS

SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet"]

#: variant -> (sub-folder, file suffix)
VARIANTS = {
    "obj_bg": ("main_split", ""),
    "obj_only": ("main_split_nobg", ""),
    "hardest": ("main_split", "_augmentedrot_scale75"),
}
_ALIASES = {"pb_t50_rs": "hardest", "objectdataset": "obj_bg"}


def scanobjectnn_file(root: Path, variant: str, split: str) -> Path:
    """The h5 file of (variant, split) under ``root`` (the ScanObjectNN folder, its ``h5_files`` child, or the
    split folder itself)."""
    sub, suffix = VARIANTS[variant]
    name = f"{'training' if split == 'train' else 'test'}_objectdataset{suffix}.h5"
    if not root.exists():
        raise missing_root_error("ScanObjectNN root", root, f"{sub}/{name}")
    candidates = [root / sub / name, root / "h5_files" / sub / name, root.parent / sub / name]
    if root.name == sub:
        candidates.insert(0, root / name)
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"ScanObjectNN {variant} {split} file not found: looked for {sub}/{name} under {root} "
                    f"(tried {[str(c) for c in candidates]}); {README_HINT}")


@DATASETS.register("scanobjectnn")
class ScanObjectNN(PointCloudDataset):
    """ScanObjectNN classification: ``(points (npoints, 3), label)`` with the 15 classes in the official order.

    Args:
        root: the ScanObjectNN folder holding ``main_split/`` and ``main_split_nobg/``.
        variant: ``obj_bg`` | ``obj_only`` | ``hardest`` (PB_T50_RS).
        split: ``train`` or ``test``.
        npoints: 2048 uses every stored point; fewer are chosen by ``sampling`` (fps | random | first).
        normalize: ``false`` (Point-MAE's choice), ``auto`` or ``true``.
        npoints_fps, fps_pool: training: redraw the cloud at every fetch as Point-MAE's fine-tuning runner does
            (2400 for 2048 points: every stored point is kept, so each fetch is a random order); see
            :class:`~pointpeft.data.modelnet40.ModelNet40`.
        transforms: augmentation nodes, e.g. ``[{type: scale_translate}]`` or ``[{type: rotate_up, axis: y}]``.
    """

    def __init__(self, root: str | os.PathLike = "datasets/ScanObjectNN", variant: str = "obj_bg",
                 split: str = "train", npoints: int = 2048, sampling: str = "fps", normalize: bool | str = False,
                 seed: int = 0, npoints_fps: int | None = None, fps_pool: str = "per_item",
                 transforms: Any = None) -> None:
        variant = _ALIASES.get(str(variant).lower(), str(variant).lower())
        check_choice("variant", variant, tuple(VARIANTS))
        check_choice("split", split, ("train", "test"))
        check_choice("sampling", sampling, SAMPLINGS)
        self.variant, self.split, self.sampling, self.seed = variant, split, sampling, int(seed)
        self.npoints = check_positive_int("npoints", npoints)
        self.resampling = TrainResampling(self.npoints, npoints_fps, fps_pool)
        self.normalize = check_normalize(normalize)
        path = scanobjectnn_file(resolve_root(root), variant, split)
        arrays = read_h5(path, ("data", "label"))
        data = check_cloud_array(arrays["data"], "data", str(path))[..., :3]
        labels = check_labels(check_label_array(arrays["label"], len(data), str(path)), len(SCANOBJECTNN_CLASSES),
                              str(path))
        check_finite(data, str(path))
        data = normalize_clouds(data, self.normalize)
        data = resample_clouds(data, self.resampling.keep(data.shape[1]), sampling, self.seed, str(path), progress=True)
        super().__init__(SCANOBJECTNN_CLASSES, labels, self.resampling.transforms(transforms), data, source=str(path))
        logger.info("ScanObjectNN %s %s: %d shapes, %d points (%s)", variant, split, len(self), self.npoints, path)
