"""Image transforms for the 2D data sets: timm/torchvision pieces in the VTAB-1k protocol's order.

The VTAB-1k recipe NOAH / Bi-adapter use (``--no_aug --direct_resize``) is a plain bicubic resize of the whole image
to ``img_size`` x ``img_size``, ``ToTensor`` and ImageNet (or Inception, [-1, 1]) normalisation, for training and
testing alike; flips and RandAugment are off by default and can be switched on for other experiments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pointpeft.errors import ConfigError

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # timm IMAGENET_DEFAULT_MEAN / _STD
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # timm IMAGENET_INCEPTION_MEAN / _STD: pixels to [-1, 1]
    "none": None,  # ToTensor only: pixels in [0, 1]
}
RESIZES = ("direct", "crop")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def check_image_options(img_size: int, normalization: str, resize: str, interpolation: str = "bicubic",
                        crop_pct: float = 0.875) -> None:
    """ConfigError naming the bad option (called by every image data set before it reads anything)."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    if resize not in RESIZES:
        raise ConfigError(f"resize must be one of {list(RESIZES)} (direct: whole image to img_size x img_size, "
                          f"as NOAH's --direct_resize; crop: shorter side to img_size/crop_pct, then centre "
                          f"crop), got {resize!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct!r}")


def build_image_transform(img_size: int = 224, normalization: str = "imagenet", resize: str = "direct",
                          hflip: bool = False, randaugment: str | None = None, interpolation: str = "bicubic",
                          crop_pct: float = 0.875) -> Callable[..., torch.Tensor]:
    """PIL image -> float tensor (3, img_size, img_size).

    ``randaugment`` is a timm RandAugment string such as ``rand-m9-mstd0.5`` (None: off); ``hflip`` adds a random
    horizontal flip. Both come after the resize, so they act at the model's resolution.
    """
    from timm.data import rand_augment_transform
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    check_image_options(img_size, normalization, resize, interpolation, crop_pct)
    mode = InterpolationMode(interpolation)
    steps: list[Callable] = []
    if resize == "direct":
        steps.append(T.Resize((img_size, img_size), interpolation=mode))
    else:
        steps += [T.Resize(int(img_size / crop_pct), interpolation=mode), T.CenterCrop(img_size)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if randaugment:
        if not isinstance(randaugment, str) or not randaugment.startswith("rand"):
            raise ConfigError(f"randaugment must be a timm RandAugment string like 'rand-m9-mstd0.5' or null, "
                              f"got {randaugment!r}")
        mean = NORMALIZATIONS[normalization] or ((0.5, 0.5, 0.5), None)
        fill = tuple(round(255 * m) for m in mean[0])
        try:
            steps.append(rand_augment_transform(randaugment, {"translate_const": int(img_size * 0.45),
                                                              "img_mean": fill}))
        except (ValueError, AssertionError, KeyError) as e:
            raise ConfigError(f"randaugment {randaugment!r}: {e}") from None
    steps.append(T.ToTensor())
    norm = NORMALIZATIONS[normalization]
    if norm is not None:
        steps.append(T.Normalize(mean=norm[0], std=norm[1]))
    return T.Compose(steps)
