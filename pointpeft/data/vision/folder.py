"""``image_folder``: the torchvision ImageFolder layout, ``<root>/<split>/<class>/<image>``.

Class indices are the sorted class-folder names found in ANY split folder of ``root`` (so train and test agree
even when one split lacks a class), unless ``classes`` lists them explicitly. ``split: null`` reads
``<root>/<class>/<image>`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pointpeft.data.base import README_HINT, resolve_root
from pointpeft.data.vision.base import IMAGE_SUFFIXES, ImageDataset
from pointpeft.errors import ConfigError, DataError
from pointpeft.registry import DATASETS

LAYOUT = "<root>/<split>/<class name>/<image>.{jpg,png,...} (or <root>/<class name>/<image> with split: null)"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@DATASETS.register("image_folder")
class ImageFolder(ImageDataset):
    """Images in class folders; ``split`` names the sub-folder of ``root`` (train, val, test, ...)."""

    def __init__(self, root: str, split: str | None = "train", classes: Sequence[str] | None = None,
                 img_size: int = 224, normalization: str = "imagenet", resize: str = "direct",
                 hflip: bool = False, randaugment: str | None = None, interpolation: str = "bicubic",
                 crop_pct: float = 0.875) -> None:
        base = resolve_root(root)
        if not base.is_dir():
            raise DataError(f"image folder root not found: {base} (expected {LAYOUT}); {README_HINT}")
        folder = base / split if split else base
        if not folder.is_dir():
            present = _class_dirs(base)
            raise DataError(f"image folder split {split!r} not found: {folder} (expected {LAYOUT}); folders in "
                            f"{base}: {present or '(none)'}")
        found = _class_dirs(folder)
        if not found:
            raise DataError(f"{folder}: no class folders (expected {LAYOUT})")
        if classes is not None:
            classes = [str(c) for c in classes]
            if len(set(classes)) != len(classes):
                raise ConfigError(f"image_folder: classes has duplicates: {classes}")
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DataError(f"{folder}: class folder(s) {unknown} are not in the configured classes {classes}")
        elif split:
            names: set[str] = set()
            for sibling in _class_dirs(base):
                names.update(_class_dirs(base / sibling))
            classes = sorted(names)
        else:
            classes = found
        index = {c: i for i, c in enumerate(classes)}
        files: list[Path] = []
        labels: list[int] = []
        for name in found:
            imgs = _images(folder / name)
            files += imgs
            labels += [index[name]] * len(imgs)
        if not files:
            raise DataError(f"{folder}: no images with suffixes {list(IMAGE_SUFFIXES)} in its class folders")
        self.split = split
        super().__init__(classes, np.asarray(labels), files, img_size=img_size, normalization=normalization,
                         resize=resize, hflip=hflip, randaugment=randaugment, interpolation=interpolation,
                         crop_pct=crop_pct, source=str(folder))
