"""ModelNet40 (and ModelNet10) in the three layouts users already have on disk.

* ``hdf5`` — PointNet's ``modelnet40_ply_hdf5_2048/`` (or the 1024-point copy in ../shared/data): ``ply_data_*.h5``
  with ``data`` (M, N, 3) and ``label`` (M, 1), listed by ``{train,test}_files.txt`` (lines may be bare names or
  PointNet's ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``; resolved by base name), ``shape_names.txt``.
* ``fps_dat`` — Point-MAE's ``modelnet40_{train,test}_8192pts_fps.dat``: a pickle of ``[list of (8192, 6) arrays,
  list of (1,) label arrays]``, read only through :func:`pointpeft.utils.safe_pickle.safe_load`.
* ``normal_resampled`` — ``modelnet40_normal_resampled/``: ``<class>/<class>_NNNN.txt`` with comma separated
  x,y,z,nx,ny,nz (10k points), ``modelnet{40,10}_shape_names.txt``, ``modelnet{40,10}_{train,test}.txt``.
  Read per item, or once into an FPS cache ``.npy`` (``cache: true``) written atomically.

``root`` may be the layout folder itself or its parent; ``layout: auto`` picks, in this order, fps_dat, hdf5,
normal_resampled (fastest first). Clouds are unit-sphere normalised (Point-MAE's pc_normalize) when they are not
already (``normalize: auto``), *before* resampling to ``npoints``; a source that already is normalised and has
exactly ``npoints`` points is returned bit-exact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

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
    read_lines,
    resample_cloud,
    resample_clouds,
    resolve_root,
)
from pointpeft.data.point_files import read_text_points
from pointpeft.data.transforms import TrainResampling
from pointpeft.errors import ConfigError, DataError
from pointpeft.registry import DATASETS
from pointpeft.utils.io import atomic_write

MODELNET40_CLASSES = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel",
    "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool",
    "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]
MODELNET10_CLASSES = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table",
                      "toilet"]

LAYOUTS = ("auto", "fps_dat", "hdf5", "normal_resampled")
EXPECTED = ("one of: modelnet40_normal_resampled/ (modelnet40_shape_names.txt, modelnet40_{split}.txt, "
            "<class>/<class>_NNNN.txt), modelnet40_{split}_8192pts_fps.dat, or modelnet40_ply_hdf5_2048/ "
            "({split}_files.txt, ply_data_{split}N.h5, shape_names.txt) — as the root or inside it")


def _dat_files(folder: Path, ncat: int, split: str) -> dict[int, Path]:
    pat = re.compile(rf"modelnet{ncat}_{split}_(\d+)pts_fps\.dat$")
    out = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = pat.match(p.name)
            if m:
                out[int(m.group(1))] = p
    return out


def _has_layout(folder: Path, layout: str, ncat: int, split: str) -> bool:
    if layout == "fps_dat":
        return bool(_dat_files(folder, ncat, split))
    if layout == "hdf5":
        return (folder / f"{split}_files.txt").is_file() or any(folder.glob(f"ply_data_{split}*.h5"))
    return (folder / f"modelnet{ncat}_shape_names.txt").is_file() and (folder / f"modelnet{ncat}_{split}.txt").is_file()


def detect_layout(root: Path, layout: str, num_category: int, split: str) -> tuple[str, Path]:
    """(layout, folder) found at ``root`` or one of its known sub-folders; DataError naming what was looked at."""
    if not root.exists():
        raise missing_root_error("ModelNet data root", root, EXPECTED)
    candidates = [root, root / "modelnet40_normal_resampled", root / "ModelNet" / "modelnet40_normal_resampled"]
    candidates += sorted(p for p in root.glob("modelnet40_ply_hdf5_*") if p.is_dir())
    order = ("fps_dat", "hdf5", "normal_resampled") if layout == "auto" else (layout,)
    for kind in order:
        for folder in candidates:
            if _has_layout(folder, kind, num_category, split):
                return kind, folder
    want = EXPECTED if layout == "auto" else f"the {layout!r} layout"
    raise DataError(f"no ModelNet{num_category} {split!r} split found: looked at {root} and "
                    f"{[str(c.relative_to(root)) for c in candidates[1:]]} (expected {want}); {README_HINT}")


@DATASETS.register("modelnet40")
class ModelNet40(PointCloudDataset):
    """ModelNet40/10 classification: ``(points (npoints, 3 or 6), label)``.

    Args:
        root: data folder (a layout folder or its parent); relative paths resolve against the current directory.
        split: ``train`` or ``test``.
        npoints: points per cloud; more than stored is an error (no upsampling).
        sampling: ``fps`` (farthest point sampling from point 0), ``random`` (seeded by ``(seed, index)``) or
            ``first``. Point-MAE's .dat clouds are stored in FPS order, so there ``fps`` takes the first points
            (identical to running FPS again from point 0).
        use_normals: return x,y,z,nx,ny,nz (txt and .dat layouts; HDF5 needs a ``normal`` field).
        layout: ``auto`` | ``fps_dat`` | ``hdf5`` | ``normal_resampled``.
        cache: txt layout only: resample every shape once and keep an ``.npy`` cache (atomic write) in
            ``cache_dir`` (default: beside the data; falls back to memory when the folder is read-only).
        num_category: 40, or 10 for ModelNet10 (txt and .dat layouts).
        normalize: ``auto`` (shapes not already unit-sphere normalised), ``true`` or ``false``.
        npoints_fps: training: redraw the cloud at every fetch as Point-MAE's fine-tuning runner does (FPS
            ``min(npoints_fps, stored)`` points from a random start, then a random ``npoints`` of them; 1200 for
            1024 points); None = the same ``npoints`` every epoch. See :class:`~pointpeft.data.transforms.FpsResample`.
        fps_pool: ``per_item`` (FPS at every fetch from every stored point, the original) or ``cached`` (FPS once
            at load from point 0, the ``npoints_fps`` kept per cloud; cheaper, the larger set no longer moves).
        transforms: augmentation config nodes (see :mod:`pointpeft.data.transforms`), applied after the redraw.
    """

    def __init__(self, root: str | os.PathLike = "datasets/ModelNet40", split: str = "train", npoints: int = 1024,
                 sampling: str = "fps", use_normals: bool = False, layout: str = "auto", cache: bool = False,
                 cache_dir: str | os.PathLike | None = None, num_category: int = 40, normalize: bool | str = "auto",
                 seed: int = 0, npoints_fps: int | None = None, fps_pool: str = "per_item",
                 transforms: Any = None) -> None:
        check_choice("split", split, ("train", "test"))
        check_choice("sampling", sampling, SAMPLINGS)
        check_choice("layout", layout, LAYOUTS)
        check_choice("num_category", num_category, (40, 10))
        self.npoints = check_positive_int("npoints", npoints)
        self.resampling = TrainResampling(self.npoints, npoints_fps, fps_pool)
        self.normalize = check_normalize(normalize)
        self.split, self.sampling, self.use_normals, self.seed = split, sampling, bool(use_normals), int(seed)
        self.num_category = num_category
        self.channels = 6 if self.use_normals else 3
        root_path = resolve_root(root)
        self.layout, self.folder = detect_layout(root_path, layout, num_category, split)
        reader = {"hdf5": self._load_hdf5, "fps_dat": self._load_dat, "normal_resampled": self._load_txt}[self.layout]
        self._txt_paths: list[Path] | None = None
        classes, labels, points, source = reader(cache, cache_dir)
        super().__init__(classes, labels, self.resampling.transforms(transforms), points, source=source)
        logger.info("ModelNet%d %s: %d shapes, %d classes, %d points (%s layout, %s)", num_category, split,
                    len(self), self.num_classes, self.npoints, self.layout, self.folder)

    # -- HDF5 --------------------------------------------------------------------------------------------------
    def _class_names_hdf5(self) -> list[str]:
        names_file = self.folder / "shape_names.txt"
        if names_file.is_file():
            names = read_lines(names_file)
        else:
            names = MODELNET40_CLASSES if self.num_category == 40 else MODELNET10_CLASSES
            logger.warning("%s missing; using the standard ModelNet%d class order", names_file, self.num_category)
        if len(names) != self.num_category:
            raise DataError(f"{names_file}: lists {len(names)} classes, but num_category={self.num_category}")
        return names

    def _h5_files(self) -> list[Path]:
        list_file = self.folder / f"{self.split}_files.txt"
        if not list_file.is_file():
            files = sorted(self.folder.glob(f"ply_data_{self.split}*.h5"),
                           key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
            return files
        files = []
        for lineno, line in enumerate(read_lines(list_file), 1):
            path = self.folder / Path(line.replace("\\", "/")).name
            if not path.is_file():
                raise DataError(f"{list_file} line {lineno}: {line!r} -> {path} does not exist "
                                "(entries are resolved by base name inside the layout folder)")
            files.append(path)
        if not files:
            raise DataError(f"{list_file}: lists no HDF5 files")
        return files

    def _load_hdf5(self, cache: bool, cache_dir: Any) -> tuple[list[str], np.ndarray, np.ndarray, str]:
        classes = self._class_names_hdf5()
        all_pts, all_labels, offset = [], [], 0
        for path in self._h5_files():
            arrays = read_h5(path, ("data", "label"), ("normal",) if self.use_normals else ())
            data = check_cloud_array(arrays["data"], "data", str(path))
            labels = check_labels(check_label_array(arrays["label"], len(data), str(path)), len(classes), str(path))
            if self.use_normals:
                if "normal" not in arrays:
                    raise DataError(f"{path}: use_normals=true needs a 'normal' field (fields: data, label)")
                normals = check_cloud_array(arrays["normal"], "normal", str(path))
                if normals.shape[:2] != data.shape[:2]:
                    raise DataError(f"{path}: field 'normal' has shape {normals.shape}, 'data' {data.shape}")
                data = np.concatenate([data[..., :3], normals[..., :3]], axis=-1)
            else:
                data = data[..., :3]
            check_finite(data, str(path))
            data = normalize_clouds(data, self.normalize)
            all_pts.append(resample_clouds(data, self.resampling.keep(data.shape[1]), self.sampling, self.seed, str(path), offset,
                                           progress=True))
            all_labels.append(labels)
            offset += len(data)
        points = all_pts[0] if len(all_pts) == 1 else np.concatenate(all_pts)
        return classes, np.concatenate(all_labels), points, str(self.folder)

    # -- Point-MAE .dat ----------------------------------------------------------------------------------------
    def _load_dat(self, cache: bool, cache_dir: Any) -> tuple[list[str], np.ndarray, np.ndarray, str]:
        from pointpeft.utils.safe_pickle import safe_load

        files = _dat_files(self.folder, self.num_category, self.split)
        usable = {k: p for k, p in files.items() if k >= self.npoints}
        if not usable:
            raise DataError(f"{self.folder}: the .dat files hold {sorted(files)} points per shape, fewer than "
                            f"npoints={self.npoints} (clouds are never upsampled)")
        path = usable[min(usable)]
        obj = safe_load(path)
        if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and isinstance(obj[0], (list, tuple))
                and isinstance(obj[1], (list, tuple)) and len(obj[0]) == len(obj[1])):
            raise DataError(f"{path}: expected a pickle of [list of point arrays, list of labels] of equal length")
        raw_points, raw_labels = obj
        classes = self._txt_class_names(required=False)
        labels = np.empty(len(raw_labels), dtype=np.int64)
        for i, lab in enumerate(raw_labels):
            arr = np.asarray(lab).reshape(-1)
            if arr.size != 1:
                raise DataError(f"{path}: label at index {i} has {arr.size} values, expected 1")
            labels[i] = check_labels(arr, len(classes), str(path), offset=i)[0]
        if not raw_points:
            raise DataError(f"{path}: holds no clouds")
        out: np.ndarray | None = None
        # FPS from point 0 on a cloud stored in FPS order returns its first points; "first" is then exact FPS.
        sampling = "first" if self.sampling == "fps" else self.sampling
        for i, pts in enumerate(raw_points):
            if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < self.channels:
                shape = getattr(pts, "shape", type(pts).__name__)
                raise DataError(f"{path}: points at index {i} have shape {shape}, expected (N, {self.channels}+)")
            pts = pts[:, : self.channels].astype(np.float32)
            check_finite(pts, str(path), offset=i)
            pts = normalize_clouds(pts, self.normalize)
            keep = self.resampling.keep(len(pts))
            if out is None:
                out = np.empty((len(raw_points), keep, self.channels), dtype=np.float32)
            elif keep != out.shape[1]:
                raise DataError(f"{path}: points at index {i} have {len(pts)} points, index 0 has another count; "
                                f"npoints_fps with fps_pool=per_item needs clouds of one size")
            out[i] = resample_cloud(pts, keep, sampling, self.seed, i, str(path))
            raw_points[i] = None  # free the 8192-point copy as we go
        assert out is not None
        return classes, labels, out, str(path)

    # -- normal_resampled txt ----------------------------------------------------------------------------------
    def _txt_class_names(self, required: bool = True) -> list[str]:
        names_file = self.folder / f"modelnet{self.num_category}_shape_names.txt"
        if names_file.is_file():
            names = read_lines(names_file)
            if len(names) != self.num_category:
                raise DataError(f"{names_file}: lists {len(names)} classes, expected {self.num_category}")
            return names
        if required:
            raise DataError(f"{names_file} not found; {README_HINT}")
        return MODELNET40_CLASSES if self.num_category == 40 else MODELNET10_CLASSES

    def _load_txt(self, cache: bool, cache_dir: Any) -> tuple[list[str], np.ndarray, np.ndarray | None, str]:
        classes = self._txt_class_names()
        index = {c: i for i, c in enumerate(classes)}
        list_file = self.folder / f"modelnet{self.num_category}_{self.split}.txt"
        paths, labels = [], []
        for lineno, shape_id in enumerate(read_lines(list_file), 1):
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in index:
                raise DataError(f"{list_file} line {lineno}: class {cls!r} of {shape_id!r} is not in "
                                f"modelnet{self.num_category}_shape_names.txt")
            path = self.folder / cls / f"{shape_id}.txt"
            if not path.is_file():
                raise DataError(f"{list_file} line {lineno}: {path} does not exist")
            paths.append(path)
            labels.append(index[cls])
        self._txt_paths = paths
        labels_arr = np.asarray(labels, dtype=np.int64)
        if not cache:
            return classes, labels_arr, None, str(list_file)
        cache_path = Path(cache_dir).expanduser().resolve() if cache_dir else self.folder
        tag = f"{self.sampling}" + (f"{self.seed}" if self.sampling == "random" else "")
        if self.resampling.npoints_fps is not None:
            tag += f"_pool{self.resampling.npoints_fps}{self.resampling.fps_pool}"
        norm = {True: "", "auto": "", False: "_raw"}[self.normalize]
        cache_file = cache_path / f"modelnet{self.num_category}_{self.split}_{self.npoints}pts_{tag}{norm}.npy"
        points = self._read_cache(cache_file, len(paths))
        if points is None:
            points = self._build_cache(paths)
            try:
                atomic_write(cache_file, lambda tmp: _save_npy(tmp, points))
                logger.info("wrote %s", cache_file)
            except OSError as e:
                logger.warning("could not write the cache %s (%s); keeping it in memory", cache_file, e)
        return classes, labels_arr, points[..., : self.channels], str(list_file)

    def _read_cache(self, cache_file: Path, n: int) -> np.ndarray | None:
        if not cache_file.is_file():
            return None
        try:
            arr = np.load(cache_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable cache %s (%s); rebuilding", cache_file, e)
            return None
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] != 6 or arr.shape[1] < self.npoints \
                or not np.isfinite(arr).all():
            logger.warning("ignoring cache %s with shape %s (expected (%d, >=%d, 6)); rebuilding", cache_file,
                           arr.shape, n, self.npoints)
            return None
        return arr

    def _build_cache(self, paths: list[Path]) -> np.ndarray:
        from tqdm import tqdm

        clouds = [self._txt_cloud(path, i, channels=6)
                  for i, path in enumerate(tqdm(paths, desc="ModelNet txt -> cache", unit="shape"))]
        if len({len(c) for c in clouds}) > 1:
            raise DataError(f"{paths[0].parent.parent}: clouds of several sizes; npoints_fps with "
                            "fps_pool=per_item needs clouds of one size (use fps_pool: cached)")
        return np.stack(clouds)

    def _txt_cloud(self, path: Path, index: int, channels: int) -> np.ndarray:
        pts = read_text_points(path, min_channels=channels)[:, :channels]
        check_finite(pts, str(path), offset=index)
        pts = normalize_clouds(pts, self.normalize)
        return resample_cloud(pts, self.resampling.keep(len(pts)), self.sampling, self.seed, index, str(path))

    def get_points(self, index: int) -> np.ndarray:
        if self.points is not None:
            return self.points[index]
        assert self._txt_paths is not None
        return self._txt_cloud(self._txt_paths[index], index, self.channels)


def _save_npy(tmp: str, arr: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def modelnet_classes(num_category: int = 40) -> list[str]:
    """The standard class order (alphabetical) of ModelNet40 or ModelNet10."""
    if num_category not in (10, 40):
        raise ConfigError(f"num_category must be 10 or 40, got {num_category}")
    return list(MODELNET40_CLASSES if num_category == 40 else MODELNET10_CLASSES)
