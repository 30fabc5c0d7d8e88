"""2D data sets for the timm ViT experiments, registered in :data:`pointpeft.registry.DATASETS`:

* ``vtab1k`` — VTAB-1k tasks in NOAH's folder layout (:mod:`.vtab`),
* ``image_folder`` — ``<root>/<split>/<class>/<image>`` (:mod:`.folder`),
* ``digits`` — scikit-learn's 8x8 digits, the embedded default that needs no download (:mod:`.digits`).

Each yields ``(image FloatTensor (3, img_size, img_size), label int)`` with ``classes`` / ``num_classes`` /
``labels``; :func:`pointpeft.data.build_dataset` imports this package on demand.
"""

from pointpeft.data.vision.base import IMAGE_SUFFIXES, ImageDataset, load_rgb
from pointpeft.data.vision.digits import Digits
from pointpeft.data.vision.folder import ImageFolder
from pointpeft.data.vision.transforms import NORMALIZATIONS, build_image_transform
from pointpeft.data.vision.vtab import VTAB_GROUPS, VTAB_TASKS, VTAB1k, read_list_file, vtab_group

__all__ = [
    "IMAGE_SUFFIXES", "NORMALIZATIONS", "VTAB1k", "VTAB_GROUPS", "VTAB_TASKS", "Digits", "ImageDataset",
    "ImageFolder", "build_image_transform", "load_rgb", "read_list_file", "vtab_group",
]
