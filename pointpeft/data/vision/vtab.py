"""``vtab1k``: the VTAB-1k benchmark in the folder layout NOAH / Bi-adapter / SSF distribute.

Layout (``root`` holds one folder per task)::

    <root>/<task>/train800val200.txt   # 1,000 training images: the VTAB-1k training set
    <root>/<task>/train800.txt         # its 800 / 200 split, for hyper-parameter search
    <root>/<task>/val200.txt
    <root>/<task>/test.txt             # the full test split of the source data set
    <root>/<task>/images/...           # images anywhere under the task folder

Each list line is ``relative/path.jpg label`` (the path relative to the task folder; it may hold spaces, the label is
the last field). VTAB-1k lists carry no class names, so classes are named ``"0" .. "C-1"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointpeft.data.base import README_HINT, resolve_root
from pointpeft.data.vision.base import ImageDataset
from pointpeft.errors import ConfigError, DataError
from pointpeft.registry import DATASETS

#: task -> (number of classes, VTAB group), in the order of the VTAB-1k tables.
VTAB_TASKS: dict[str, tuple[int, str]] = {
    "cifar": (100, "natural"),
    "caltech101": (102, "natural"),
    "dtd": (47, "natural"),
    "oxford_flowers102": (102, "natural"),
    "oxford_iiit_pet": (37, "natural"),
    "svhn": (10, "natural"),
    "sun397": (397, "natural"),
    "patch_camelyon": (2, "specialized"),
    "eurosat": (10, "specialized"),
    "resisc45": (45, "specialized"),
    "diabetic_retinopathy": (5, "specialized"),
    "clevr_count": (8, "structured"),
    "clevr_dist": (6, "structured"),
    "dmlab": (6, "structured"),
    "kitti": (4, "structured"),
    "dsprites_loc": (16, "structured"),
    "dsprites_ori": (16, "structured"),
    "smallnorb_azi": (18, "structured"),
    "smallnorb_ele": (9, "structured"),
}
VTAB_GROUPS = ("natural", "specialized", "structured")
#: other folder names the same task is found under in released copies (NOAH's scripts use cifar100, oxford_pet)
TASK_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {"cifar": ("cifar100",), "oxford_iiit_pet": ("oxford_pet",)}
SPLIT_FILES = {"train800val200": "train800val200.txt", "train800": "train800.txt", "val200": "val200.txt",
               "test": "test.txt"}
LAYOUT = ("<root>/<task>/{train800val200,train800,val200,test}.txt with lines 'relative/path.jpg label' and the "
          "images under <root>/<task>/")


def vtab_group(task: str) -> str:
    """natural | specialized | structured; ConfigError for a task outside VTAB-1k."""
    if task not in VTAB_TASKS:
        raise ConfigError(f"unknown VTAB-1k task {task!r}; tasks: {list(VTAB_TASKS)}")
    return VTAB_TASKS[task][1]


def read_list_file(path: Path) -> tuple[list[str], np.ndarray]:
    """(relative paths, labels) of a VTAB list file; DataError naming file and line for a malformed line."""
    paths: list[str] = []
    labels: list[int] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text list file ({e})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'relative/path.jpg label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {parts[1]!r} is not an integer") from None
        if label < 0:
            raise DataError(f"{path}:{lineno}: negative label {label}")
        paths.append(parts[0])
        labels.append(label)
    if not paths:
        raise DataError(f"{path}: empty list file")
    return paths, np.asarray(labels, dtype=np.int64)


def find_task_dir(root: Path, task: str) -> Path:
    for name in (task, *TASK_FOLDER_ALIASES.get(task, ())):
        if (root / name).is_dir():
            return root / name
    if not root.is_dir():
        raise DataError(f"VTAB-1k root not found: {root} (expected {LAYOUT}); {README_HINT}")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())[:25]
    raise DataError(f"VTAB-1k task folder not found: {root / task} (expected {LAYOUT}); folders in {root}: "
                    f"{present or '(none)'}; {README_HINT}")


@DATASETS.register("vtab1k")
class VTAB1k(ImageDataset):
    """One VTAB-1k task and split. ``num_classes`` (null: the VTAB table's count, or max label + 1 for a task
    outside VTAB-1k) fixes the class count; labels outside it are errors naming file and line."""

    def __init__(self, root: str, task: str, split: str = "train800val200", img_size: int = 224,
                 normalization: str = "imagenet", resize: str = "direct", hflip: bool = False,
                 randaugment: str | None = None, interpolation: str = "bicubic", crop_pct: float = 0.875,
                 num_classes: int | None = None, check_files: bool = True) -> None:
        if split not in SPLIT_FILES:
            raise ConfigError(f"vtab1k: split must be one of {list(SPLIT_FILES)}, got {split!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ConfigError(f"vtab1k: num_classes must be a positive integer or null, got {num_classes!r}")
        task_dir = find_task_dir(resolve_root(root), task)
        list_file = task_dir / SPLIT_FILES[split]
        if not list_file.is_file():
            present = sorted(p.name for p in task_dir.glob("*.txt"))
            raise DataError(f"VTAB-1k list file not found: {list_file} (expected {LAYOUT}); list files in "
                            f"{task_dir}: {present or '(none)'}")
        rel, labels = read_list_file(list_file)
        if num_classes is None:
            num_classes = VTAB_TASKS[task][0] if task in VTAB_TASKS else self._infer_classes(task_dir, labels)
        bad = np.flatnonzero(labels >= num_classes)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{list_file}: label {int(labels[i])} of {rel[i]!r} (entry {i + 1}) is outside "
                            f"0..{num_classes - 1} ({task} has {num_classes} classes)")
        files = [task_dir / r for r in rel]
        if check_files:
            for i, f in enumerate(files):
                if not f.is_file():
                    raise DataError(f"{list_file}: entry {i + 1} names {rel[i]!r}, but {f} does not exist "
                                    f"(paths are relative to {task_dir})")
        self.task, self.split, self.root = task, split, task_dir
        super().__init__([str(c) for c in range(num_classes)], labels, files, img_size=img_size,
                         normalization=normalization, resize=resize, hflip=hflip, randaugment=randaugment,
                         interpolation=interpolation, crop_pct=crop_pct, source=str(list_file))

    @staticmethod
    def _infer_classes(task_dir: Path, labels: np.ndarray) -> int:
        """Max label + 1 over every list file of the task, so all splits agree on the class count."""
        top = int(labels.max())
        for name in SPLIT_FILES.values():
            if (task_dir / name).is_file():
                top = max(top, int(read_list_file(task_dir / name)[1].max()))
        return top + 1
