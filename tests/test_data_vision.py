"""2D data sets: digits (shapes, determinism, stratified disjoint splits), the VTAB-1k layout reader and the image
folder reader on tiny PNG folders written here, transforms, and the errors for missing or malformed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pointpeft.data import build_dataloader, build_dataset
from pointpeft.data.vision import VTAB_GROUPS, VTAB_TASKS, build_image_transform, vtab_group
from pointpeft.data.vision.digits import Digits
from pointpeft.errors import ConfigError, DataError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


# -- digits ------------------------------------------------------------------------------------------------------
def test_digits_shapes_and_values() -> None:
    ds = build_dataset({"type": "digits", "split": "train", "img_size": 32})
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert ds.num_classes == 10 and ds.classes == [str(i) for i in range(10)]
    pixels = x * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)
    lo = (0 - IMAGENET_MEAN) / IMAGENET_STD  # background pixels are 0 -> (0 - mean) / std
    assert torch.allclose(x.amin(dim=(1, 2)), lo, atol=1e-4)
    big = Digits(split="test", img_size=64, normalization="none")
    img, _ = big[3]
    assert img.shape == (3, 64, 64) and 0.0 <= img.min() and img.max() <= 1.0


def test_digits_splits_are_stratified_disjoint_and_deterministic() -> None:
    parts = {s: Digits(split=s) for s in ("train", "val", "test", "trainval")}
    idx = {s: set(d.indices.tolist()) for s, d in parts.items()}
    assert not idx["train"] & idx["val"] and not idx["train"] & idx["test"] and not idx["val"] & idx["test"]
    assert idx["train"] | idx["val"] | idx["test"] == set(range(1797))
    assert idx["trainval"] == idx["train"] | idx["val"]
    assert len(parts["test"]) == 359 and len(parts["val"]) == 179 and len(parts["train"]) == 1259
    for ds in parts.values():  # every class in every split, in proportion (at most 1 off per class)
        counts = ds.class_counts()
        share = counts / counts.sum()
        assert counts.min() > 0 and np.abs(share - 0.1).max() < 0.012
    again = Digits(split="test")
    assert np.array_equal(again.indices, parts["test"].indices)
    assert torch.equal(again[5][0], parts["test"][5][0])
    other = Digits(split="test", seed=1)
    assert not np.array_equal(other.indices, parts["test"].indices)


def test_digits_loader_batches() -> None:
    loader = build_dataloader(Digits(split="val"), batch_size=16, shuffle=True, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,) and y.dtype == torch.int64
    x2, y2 = next(iter(build_dataloader(Digits(split="val"), batch_size=16, shuffle=True, seed=0)))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_digits_bad_options() -> None:
    with pytest.raises(ConfigError, match="split must be one of"):
        Digits(split="training")
    with pytest.raises(ConfigError, match="img_size"):
        Digits(img_size=0)
    with pytest.raises(ConfigError, match="normalization"):
        Digits(normalization="imagnet")
    with pytest.raises(ConfigError, match="val_fraction"):
        Digits(val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ConfigError, match="unknown key"):
        build_dataset({"type": "digits", "splt": "train"})


# -- transforms --------------------------------------------------------------------------------------------------
def test_transform_direct_resize_and_normalisations() -> None:
    img = Image.fromarray(np.full((10, 30, 3), 255, np.uint8))  # non-square: direct resize squashes it
    x = build_image_transform(16, "inception")(img)
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    x = build_image_transform(16, "imagenet", resize="crop")(img)
    assert x.shape == (3, 16, 16) and torch.allclose(x[:, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD)
    flip = build_image_transform(8, "none", hflip=True, randaugment="rand-m9-mstd0.5")
    assert flip(img).shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="randaugment"):
        build_image_transform(8, randaugment="autoaug")
    with pytest.raises(ConfigError, match="resize"):
        build_image_transform(8, resize="stretch")


# -- VTAB-1k layout ----------------------------------------------------------------------------------------------
def _png(path: Path, value: int, size: tuple[int, int] = (12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = value
    Image.fromarray(arr).save(path)


def make_vtab_task(root: Path, task: str = "dtd", n_classes: int = 3) -> Path:
    """A tiny task: 6 train800, 3 val200, 4 test images; pixel red value = 40 * label + index."""
    tdir = root / task
    lines: dict[str, list[str]] = {}
    for split, n in (("train800", 6), ("val200", 3), ("test", 4)):
        for i in range(n):
            label = i % n_classes
            rel = f"images/{split}/img {i}.png" if split == "test" else f"images/{split}/{i:03d}.png"
            _png(tdir / rel, 40 * label + i)
            lines.setdefault(split, []).append(f"{rel} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, ls in lines.items():
        (tdir / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return tdir


def test_vtab_reader_splits_labels_and_pixels(tmp_path: Path) -> None:
    make_vtab_task(tmp_path)
    sizes = {}
    for split in ("train800val200", "train800", "val200", "test"):
        ds = build_dataset({"type": "vtab1k", "root": str(tmp_path), "task": "dtd", "split": split,
                            "img_size": 8, "normalization": "none"})
        sizes[split] = len(ds)
        assert ds.num_classes == 47  # the VTAB-1k class count of dtd, not the labels present
    assert sizes == {"train800val200": 9, "train800": 6, "val200": 3, "test": 4}
    ds = build_dataset({"type": "vtab1k", "root": str(tmp_path), "task": "dtd", "split": "test", "img_size": 8,
                        "normalization": "none"})
    assert ds.labels.tolist() == [0, 1, 2, 0]
    for i in range(len(ds)):  # the image read is the one the list file names (path with a space included)
        x, y = ds[i]
        assert x.shape == (3, 8, 8) and y == ds.labels[i]
        assert torch.allclose(x[0], torch.full((8, 8), (40 * y + i) / 255), atol=1e-6)
        assert torch.all(x[1:] == 0)


def test_vtab_folder_alias_and_unknown_task(tmp_path: Path) -> None:
    make_vtab_task(tmp_path, task="cifar100", n_classes=3)  # NOAH's folder name for VTAB's cifar
    assert build_dataset({"type": "vtab1k", "root": tmp_path, "task": "cifar", "img_size": 8}).num_classes == 100
    make_vtab_task(tmp_path, task="my_task", n_classes=3)  # outside VTAB-1k: classes from the labels
    ds = build_dataset({"type": "vtab1k", "root": tmp_path, "task": "my_task", "split": "val200"})
    assert ds.num_classes == 3


def test_vtab_errors_name_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"VTAB-1k root not found.*train800val200"):
        build_dataset({"type": "vtab1k", "root": tmp_path / "nope", "task": "dtd"})
    make_vtab_task(tmp_path)
    with pytest.raises(DataError, match=r"task folder not found.*eurosat.*folders in.*dtd"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "eurosat"})
    with pytest.raises(ConfigError, match="split must be one of"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "train"})
    (tmp_path / "dtd" / "val200.txt").unlink()
    with pytest.raises(DataError, match=r"list file not found.*val200.txt"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "val200"})
    (tmp_path / "dtd" / "images" / "train800" / "001.png").unlink()
    with pytest.raises(DataError, match=r"train800.txt: entry 2 names 'images/train800/001.png'"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "train800"})
    lazy = build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "train800",
                          "check_files": False})
    with pytest.raises(DataError, match="image not found"):
        lazy[1]
    (tmp_path / "dtd" / "test.txt").write_text("images/test/img 0.png 0\nimages/test/img 1.png x\n")
    with pytest.raises(DataError, match=r"test.txt:2: label 'x' is not an integer"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "test"})
    (tmp_path / "dtd" / "test.txt").write_text("images/test/img 0.png 47\n")
    with pytest.raises(DataError, match=r"label 47 .* outside 0..46"):
        build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "test"})
    (tmp_path / "dtd" / "test.txt").write_text("images/test/img 0.png 1\n")
    (tmp_path / "dtd" / "images" / "test" / "img 0.png").write_bytes(b"not a png")
    ds = build_dataset({"type": "vtab1k", "root": tmp_path, "task": "dtd", "split": "test"})
    with pytest.raises(DataError, match="not a readable image"):
        ds[0]


def test_vtab_task_table() -> None:
    groups = [vtab_group(t) for t in VTAB_TASKS]
    assert len(VTAB_TASKS) == 19 and [groups.count(g) for g in VTAB_GROUPS] == [7, 4, 8]
    assert VTAB_TASKS["sun397"][0] == 397 and VTAB_TASKS["smallnorb_ele"][0] == 9
    with pytest.raises(ConfigError):
        vtab_group("imagenet")


# -- image folder ------------------------------------------------------------------------------------------------
def test_image_folder_classes_agree_across_splits(tmp_path: Path) -> None:
    for split, names in (("train", ("cat", "dog", "eel")), ("test", ("dog", "eel"))):
        for c, name in enumerate(names):
            for i in range(2):
                _png(tmp_path / split / name / f"{i}.png", 10 * c + i)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train = build_dataset({"type": "image_folder", "root": tmp_path, "split": "train", "img_size": 8})
    test = build_dataset({"type": "image_folder", "root": tmp_path, "split": "test", "img_size": 8})
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    assert len(train) == 6 and test.labels.tolist() == [1, 1, 2, 2]
    assert train[0][0].shape == (3, 8, 8)
    flat = build_dataset({"type": "image_folder", "root": tmp_path / "test", "split": None, "img_size": 8})
    assert flat.classes == ["dog", "eel"] and flat.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match=r"split 'val' not found.*folders in .*\['test', 'train'\]"):
        build_dataset({"type": "image_folder", "root": tmp_path, "split": "val"})
    with pytest.raises(DataError, match="image folder root not found"):
        build_dataset({"type": "image_folder", "root": tmp_path / "missing"})
    with pytest.raises(DataError, match=r"class folder\(s\) \['eel'\]"):
        build_dataset({"type": "image_folder", "root": tmp_path, "split": "test", "classes": ["cat", "dog"]})
