"""``digits``: the embedded 2D default — scikit-learn's 8x8 handwritten digits, no download.

1,797 grey 8x8 images (pixel values 0..16) of 10 classes ship inside scikit-learn
(``sklearn.datasets.load_digits``). Each image becomes an RGB PIL image (grey in all three channels) and then goes
through the same transform as every image set (bicubic resize to ``img_size``, normalisation), so a tiny ViT with
8x8 patches on 32x32 inputs trains on it in seconds on a CPU.

The split is deterministic and stratified: within every class the images are permuted by ``seed``, the first
``test_fraction`` go to ``test``, the next ``val_fraction`` to ``val``, the rest to ``train``; ``trainval`` is
train + val (the analogue of VTAB-1k's train800val200).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pointpeft.data.vision.base import ImageDataset
from pointpeft.errors import ConfigError
from pointpeft.registry import DATASETS

SPLITS = ("train", "val", "test", "trainval")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) scaled to 0..255, labels int64), read once per process."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images.setflags(write=False)
    return images, np.asarray(d.target, dtype=np.int64)


def split_indices(labels: np.ndarray, split: str, seed: int, val_fraction: float,
                  test_fraction: float) -> np.ndarray:
    """Sorted indices of ``split``: per class, permuted by (seed, class), test first, then val, then train."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng([int(seed), int(c)]).permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        parts = {"test": idx[:n_test], "val": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}
        parts["trainval"] = np.concatenate([parts["val"], parts["train"]])
        out.append(parts[split])
    return np.sort(np.concatenate(out))


@DATASETS.register("digits")
class Digits(ImageDataset):
    """scikit-learn's digits, upsampled to ``img_size`` with 3 channels."""

    def __init__(self, split: str = "train", img_size: int = 32, normalization: str = "imagenet",
                 resize: str = "direct", hflip: bool = False, randaugment: str | None = None,
                 interpolation: str = "bicubic", seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2) -> None:
        if split not in SPLITS:
            raise ConfigError(f"digits: split must be one of {list(SPLITS)}, got {split!r}")
        if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ConfigError(f"digits: need 0 <= val_fraction, 0 < test_fraction and val_fraction + test_fraction "
                              f"< 1, got {val_fraction}, {test_fraction}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"digits: seed must be an integer, got {seed!r}")
        images, labels = _load()
        self.indices = split_indices(labels, split, seed, val_fraction, test_fraction)
        self.images = images
        self.split = split
        super().__init__([str(i) for i in range(10)], labels[self.indices], None, img_size=img_size,
                         normalization=normalization, resize=resize, hflip=hflip, randaugment=randaugment,
                         interpolation=interpolation, source=f"sklearn.datasets.load_digits[{split}, seed={seed}]")

    def get_image(self, index: int) -> Any:
        from PIL import Image

        return Image.fromarray(self.images[self.indices[index]]).convert("RGB")
