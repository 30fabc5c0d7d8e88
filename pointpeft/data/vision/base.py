"""The image Dataset base: labelled PIL images (read from files or made in memory) through one transform.

``dataset[i]`` is ``(image FloatTensor (3, img_size, img_size), label int)``, like the point-cloud sets'
``(points, label)``; ``classes``, ``num_classes`` and ``labels`` describe the set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pointpeft.data.vision.transforms import build_image_transform
from pointpeft.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path: str | os.PathLike) -> Any:
    """The image at ``path`` as an RGB PIL image; DataError naming the file when it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image (corrupt or truncated?): {e}") from None


class ImageDataset(Dataset):
    """Base class: ``self.labels`` (numpy int64) and either image files (``self.files``) or images made by
    :meth:`get_image` (override it). Transform options are the ones of :func:`build_image_transform`."""

    def __init__(self, classes: Sequence[str], labels: np.ndarray, files: Sequence[str | os.PathLike] | None = None,
                 *, img_size: int = 224, normalization: str = "imagenet", resize: str = "direct",
                 hflip: bool = False, randaugment: str | None = None, interpolation: str = "bicubic",
                 crop_pct: float = 0.875, source: str = "") -> None:
        self.classes = [str(c) for c in classes]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.files = [Path(f) for f in files] if files is not None else None
        self.source = source
        self.img_size = img_size
        self.transform = build_image_transform(img_size, normalization, resize, hflip, randaugment, interpolation,
                                               crop_pct)
        if self.files is not None and len(self.files) != len(self.labels):
            raise DataError(f"{source}: {len(self.files)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = int(np.flatnonzero((self.labels < 0) | (self.labels >= len(self.classes)))[0])
            raise DataError(f"{source}: label {int(self.labels[bad])} of sample {bad} is outside "
                            f"0..{len(self.classes) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def get_image(self, index: int) -> Any:
        """Sample ``index`` as an RGB PIL image, before the transform."""
        assert self.files is not None
        return load_rgb(self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of size {len(self)}")
        return self.transform(self.get_image(index)), int(self.labels[index])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, img_size={self.img_size}, "
                f"source={self.source!r})")
