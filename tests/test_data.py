"""Data sets: every on-disk layout is written small and read back; errors name file, field and index."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pointpeft.config import Config
from pointpeft.data import build_dataloader, build_dataset, pc_normalize
from pointpeft.data.modelnet40 import MODELNET10_CLASSES, MODELNET40_CLASSES
from pointpeft.data.scanobjectnn import SCANOBJECTNN_CLASSES
from pointpeft.errors import ConfigError, DataError, UnsafePickleError
from pointpeft.ops import farthest_point_sample

RNG = np.random.default_rng(0)


def _clouds(m: int, n: int, c: int = 3, scale: float = 3.0) -> np.ndarray:
    """Unnormalised random clouds (centre off zero, radius ~scale)."""
    return (RNG.standard_normal((m, n, c)) * scale + 1.5).astype(np.float32)


def _write_h5(path: Path, **fields: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            f.create_dataset(k, data=v)


# -- ModelNet40: HDF5 ------------------------------------------------------------------------------------------

@pytest.fixture
def mn_h5(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    data = _clouds(10, 64)
    labels = np.array([0, 5, 39, 2, 2, 7, 1, 0, 3, 4], dtype=np.uint8)[:, None]
    _write_h5(folder / "ply_data_train0.h5", data=data[:6], label=labels[:6])
    _write_h5(folder / "ply_data_train1.h5", data=data[6:], label=labels[6:])
    _write_h5(folder / "ply_data_test0.h5", data=data[:3], label=labels[:3])
    # PointNet's list files hold paths relative to its repository, resolved here by base name
    (folder / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n"
                                            "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n")
    (folder / "test_files.txt").write_text("ply_data_test0.h5\n")
    (folder / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    return tmp_path, data, labels[:, 0]


def test_modelnet_hdf5_pointnet_paths_parent_root(mn_h5) -> None:
    root, data, labels = mn_h5
    ds = build_dataset({"type": "modelnet40", "root": str(root), "split": "train", "npoints": 64})
    assert ds.layout == "hdf5" and ds.folder.name == "modelnet40_ply_hdf5_2048"
    assert len(ds) == 10 and ds.num_classes == 40 and ds.classes[39] == "xbox"
    assert ds.labels.tolist() == labels.tolist() and ds.labels.dtype == np.int64
    pts, label = ds[1]
    assert pts.shape == (64, 3) and pts.dtype == torch.float32 and label == 5 and isinstance(label, int)
    np.testing.assert_allclose(pts.numpy(), pc_normalize(data[1]), atol=1e-6)
    assert abs(np.linalg.norm(pts.numpy(), axis=1).max() - 1) < 1e-5
    # the layout folder itself works as root too
    ds2 = build_dataset({"type": "modelnet40", "root": str(root / "modelnet40_ply_hdf5_2048"), "split": "test",
                         "npoints": 64})
    assert len(ds2) == 3


def test_modelnet_hdf5_fps_and_random_sampling(mn_h5) -> None:
    root, data, _ = mn_h5
    ds = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16, "sampling": "fps"})
    norm = pc_normalize(data[3])
    idx = farthest_point_sample(torch.from_numpy(norm)[None], 16)[0].numpy()
    np.testing.assert_array_equal(ds[3][0].numpy(), norm[idx])
    r1 = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16, "sampling": "random", "seed": 3})
    r2 = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16, "sampling": "random", "seed": 3})
    r3 = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16, "sampling": "random", "seed": 4})
    assert torch.equal(r1[2][0], r2[2][0]) and not torch.equal(r1[2][0], r3[2][0])
    # a random subset of the normalised cloud, without repeats
    sub = r1[2][0].numpy()
    assert len(np.unique(sub, axis=0)) == 16
    assert all(np.isclose(pc_normalize(data[2]), p).all(1).any() for p in sub)
    first = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16, "sampling": "first"})
    np.testing.assert_allclose(first[0][0].numpy(), pc_normalize(data[0])[:16], atol=1e-6)


def test_modelnet_normalised_source_stays_exact(tmp_path: Path) -> None:
    data = pc_normalize(_clouds(4, 32))
    _write_h5(tmp_path / "ply_data_train0.h5", data=data, label=np.zeros((4, 1), np.uint8))
    (tmp_path / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES))
    ds = build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 32})  # no list file: glob
    assert ds.points is data or np.array_equal(ds.points, data)
    assert all(torch.equal(ds[i][0], torch.from_numpy(data[i])) for i in range(4))
    raw = build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 32, "normalize": False})
    assert np.array_equal(raw.points, data)


def test_modelnet_hdf5_normals(tmp_path: Path) -> None:
    data, normals = _clouds(3, 20), _clouds(3, 20, scale=1.0)
    _write_h5(tmp_path / "ply_data_train0.h5", data=data, label=np.zeros(3, np.int64), normal=normals)
    ds = build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 20, "use_normals": True})
    pts = ds[1][0].numpy()
    assert pts.shape == (20, 6)
    np.testing.assert_array_equal(pts[:, 3:], normals[1])  # normals are not rescaled


# -- ModelNet40: Point-MAE .dat -------------------------------------------------------------------------------

def _fps_order(cloud: np.ndarray) -> np.ndarray:
    idx = farthest_point_sample(torch.from_numpy(cloud[:, :3])[None], len(cloud))[0].numpy()
    return cloud[idx]


@pytest.fixture
def mn_dat(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[int]]:
    folder = tmp_path / "modelnet40_normal_resampled"
    folder.mkdir()
    clouds = [_fps_order(c) for c in _clouds(5, 48, c=6)]
    labels = [3, 0, 39, 3, 12]
    with open(folder / "modelnet40_train_48pts_fps.dat", "wb") as f:
        pickle.dump([clouds, [np.array([lab], dtype=np.int32) for lab in labels]], f)
    with open(folder / "modelnet40_test_48pts_fps.dat", "wb") as f:
        pickle.dump([clouds[:2], [np.array([lab], dtype=np.int32) for lab in labels[:2]]], f)
    return tmp_path, clouds, labels


def test_modelnet_dat_layout(mn_dat) -> None:
    root, clouds, labels = mn_dat
    ds = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 16})
    assert ds.layout == "fps_dat" and ds.labels.tolist() == labels and ds.classes == MODELNET40_CLASSES
    for i in range(5):
        norm = pc_normalize(clouds[i][:, :3])
        # FPS from point 0 on an FPS-ordered cloud = its first points, which is what the reader returns
        idx = farthest_point_sample(torch.from_numpy(norm)[None], 16)[0].numpy()
        np.testing.assert_array_equal(idx, np.arange(16))
        np.testing.assert_array_equal(ds[i][0].numpy(), norm[:16])
    normals = build_dataset({"type": "modelnet40", "root": str(root), "npoints": 48, "use_normals": True,
                             "split": "test"})
    np.testing.assert_array_equal(normals[1][0].numpy()[:, 3:], clouds[1][:, 3:])
    with pytest.raises(DataError, match="fewer than npoints=64"):
        build_dataset({"type": "modelnet40", "root": str(root), "npoints": 64})


def test_modelnet_dat_refuses_malicious_pickle(tmp_path: Path) -> None:
    import os

    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    (tmp_path / "modelnet40_train_8192pts_fps.dat").write_bytes(pickle.dumps([[Evil()], [np.array([0])]]))
    with pytest.raises(UnsafePickleError, match="modelnet40_train_8192pts_fps.dat"):
        build_dataset({"type": "modelnet40", "root": str(tmp_path)})
    assert not target.exists()


def test_modelnet_dat_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "modelnet40_train_32pts_fps.dat"
    path.write_bytes(pickle.dumps([[np.zeros((32, 6), np.float32), np.zeros((32,), np.float32)],
                                   [np.array([1]), np.array([2])]]))
    with pytest.raises(DataError, match=r"index 1 have shape \(32,\)"):
        build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 32})
    path.write_bytes(pickle.dumps([[np.zeros((32, 6), np.float32)], [np.array([40])]]))
    with pytest.raises(DataError, match="label 40 at index 0"):
        build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 32})


# -- ModelNet40/10: normal_resampled txt ------------------------------------------------------------------------

def _write_txt_layout(root: Path, ncat: int = 40, n: int = 40) -> tuple[Path, dict[str, np.ndarray]]:
    folder = root / "modelnet40_normal_resampled"
    names = MODELNET40_CLASSES if ncat == 40 else MODELNET10_CLASSES
    folder.mkdir(parents=True)
    (folder / f"modelnet{ncat}_shape_names.txt").write_text("\n".join(names) + "\n")
    ids = {"train": ["bed_0001", "bed_0002", "chair_0007", "night_stand_0003"], "test": ["toilet_0100"]}
    clouds = {}
    for split, shape_ids in ids.items():
        (folder / f"modelnet{ncat}_{split}.txt").write_text("\n".join(shape_ids) + "\n")
        for sid in shape_ids:
            cls = sid.rsplit("_", 1)[0]
            (folder / cls).mkdir(exist_ok=True)
            pts = _clouds(1, n, c=6)[0]
            clouds[sid] = pts
            (folder / cls / f"{sid}.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in pts))
    return folder, clouds


def test_modelnet_txt_layout_lazy_and_cached(tmp_path: Path) -> None:
    folder, clouds = _write_txt_layout(tmp_path / "mn")
    lazy = build_dataset({"type": "modelnet40", "root": str(tmp_path / "mn"), "npoints": 16})
    assert lazy.layout == "normal_resampled" and lazy.points is None
    assert [lazy.classes[k] for k in lazy.labels] == ["bed", "bed", "chair", "night_stand"]
    src = pc_normalize(np.round(clouds["chair_0007"], 6)[:, :3])
    idx = farthest_point_sample(torch.from_numpy(src)[None], 16)[0].numpy()
    np.testing.assert_allclose(lazy[2][0].numpy(), src[idx], atol=1e-5)
    cache_dir = tmp_path / "cache"
    node = {"type": "modelnet40", "root": str(folder), "npoints": 16, "cache": True, "cache_dir": str(cache_dir)}
    cached = build_dataset(node)
    files = list(cache_dir.glob("*.npy"))
    assert [f.name for f in files] == ["modelnet40_train_16pts_fps.npy"]
    assert not list(cache_dir.glob(".*tmp"))  # atomic write left nothing behind
    for i in range(4):
        np.testing.assert_allclose(cached[i][0].numpy(), lazy[i][0].numpy(), atol=1e-6)
    mtime = files[0].stat().st_mtime_ns
    again = build_dataset({**node, "use_normals": True})  # the cache keeps normals: reused, not rebuilt
    assert files[0].stat().st_mtime_ns == mtime and again[0][0].shape == (16, 6)


def test_modelnet10_txt(tmp_path: Path) -> None:
    _write_txt_layout(tmp_path, ncat=10)
    ds = build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 8, "num_category": 10,
                        "split": "test"})
    assert ds.num_classes == 10 and ds.classes[ds[0][1]] == "toilet"
    with pytest.raises(DataError, match="no ModelNet40 'train' split found"):
        build_dataset({"type": "modelnet40", "root": str(tmp_path), "npoints": 8})


def test_modelnet_txt_errors(tmp_path: Path) -> None:
    folder, _ = _write_txt_layout(tmp_path)
    (folder / "chair" / "chair_0007.txt").write_text("1,2,3,4,5,6\n1,2,nan,4,5,6\n" * 20)
    ds = build_dataset({"type": "modelnet40", "root": str(folder), "npoints": 8})
    with pytest.raises(DataError, match=r"chair_0007.txt: shape 2 has NaN"):
        ds[2]
    (folder / "chair" / "chair_0007.txt").write_text("1,2,3\n1,2\n")
    with pytest.raises(DataError, match="chair_0007.txt"):
        ds[2]
    (folder / "bed" / "bed_0002.txt").unlink()
    with pytest.raises(DataError, match=r"line 2: .*bed_0002.txt does not exist"):
        build_dataset({"type": "modelnet40", "root": str(folder), "npoints": 8})


# -- ModelNet40: errors ------------------------------------------------------------------------------------------

def test_missing_root_names_path_layout_and_readme(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_dataset({"type": "modelnet40", "root": str(missing)})
    msg = str(err.value)
    assert str(missing) in msg and "datasets/README.md" in msg and "modelnet40_ply_hdf5_2048" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"looked at .*empty.*datasets/README.md"):
        build_dataset({"type": "modelnet40", "root": str(tmp_path / "empty")})
    for kind in ("scanobjectnn", "shapenet55", "fewshot"):
        with pytest.raises(DataError, match="datasets/README.md"):
            build_dataset({"type": kind, "root": str(missing)})


def test_relative_root_resolves_against_cwd(mn_h5, monkeypatch) -> None:
    root, _, _ = mn_h5
    monkeypatch.chdir(root)
    ds = build_dataset({"type": "modelnet40", "root": "modelnet40_ply_hdf5_2048", "npoints": 64})
    assert ds.folder == (root / "modelnet40_ply_hdf5_2048").resolve()


def _mn_single(tmp_path: Path, **fields: np.ndarray) -> Path:
    _write_h5(tmp_path / "ply_data_train0.h5", **fields)
    (tmp_path / "train_files.txt").write_text("ply_data_train0.h5\n")
    return tmp_path


def test_h5_corrupt_truncated_missing_key_misshaped(tmp_path: Path) -> None:
    node = {"type": "modelnet40", "root": str(tmp_path), "npoints": 16}
    path = tmp_path / "ply_data_train0.h5"
    _mn_single(tmp_path, data=_clouds(100, 16), label=np.zeros((100, 1), np.uint8))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"ply_data_train0.h5.*(corrupt|truncated)"):
        build_dataset(node)
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match=r"ply_data_train0.h5: not a readable HDF5 file"):
        build_dataset(node)
    path.unlink()
    _mn_single(tmp_path, data=_clouds(4, 16))
    with pytest.raises(DataError, match=r"ply_data_train0.h5: missing field 'label'"):
        build_dataset(node)
    path.unlink()
    _mn_single(tmp_path, data=np.zeros((4, 16), np.float32), label=np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"ply_data_train0.h5: field 'data' has shape \(4, 16\)"):
        build_dataset(node)
    path.unlink()
    _mn_single(tmp_path, data=_clouds(4, 16), label=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"ply_data_train0.h5: field 'label' has shape \(3,\)"):
        build_dataset(node)


def test_h5_bad_labels_and_nan_name_file_and_index(tmp_path: Path) -> None:
    node = {"type": "modelnet40", "root": str(tmp_path), "npoints": 16}
    _mn_single(tmp_path, data=_clouds(5, 16), label=np.array([1, 2, 40, 3, 0], np.uint8))
    with pytest.raises(DataError, match=r"ply_data_train0.h5: label 40 at index 2 is outside 0..39"):
        build_dataset(node)
    (tmp_path / "ply_data_train0.h5").unlink()
    bad = _clouds(5, 16)
    bad[3, 7, 1] = np.inf
    _mn_single(tmp_path, data=bad, label=np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"ply_data_train0.h5: shape 3 has NaN/inf"):
        build_dataset(node)


def test_npoints_larger_than_stored_is_an_error(mn_h5) -> None:
    root, _, _ = mn_h5
    with pytest.raises(DataError, match=r"has 64 points, npoints=100 requested; choose npoints <= 64"):
        build_dataset({"type": "modelnet40", "root": str(root), "npoints": 100})


def test_list_file_entry_missing(mn_h5) -> None:
    root, _, _ = mn_h5
    (root / "modelnet40_ply_hdf5_2048" / "ply_data_train1.h5").unlink()
    with pytest.raises(DataError, match=r"train_files.txt line 2: .*ply_data_train1.h5"):
        build_dataset({"type": "modelnet40", "root": str(root), "npoints": 64})


def test_unknown_and_bad_keys_are_config_errors(mn_h5) -> None:
    root, _, _ = mn_h5
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['npoint'\]"):
        build_dataset({"type": "modelnet40", "root": str(root), "npoint": 1024})
    cfg = Config({"data": {"train": {"type": "modelnet40", "root": str(root), "npoint": 8}}},
                 sources={"data": "cfgs/base.yaml", "data.train.npoint": "cfgs/mn40.yaml"})
    with pytest.raises(ConfigError, match=r"cfgs/mn40.yaml.*npoint"):
        build_dataset(cfg["data"]["train"], cfg)
    with pytest.raises(ConfigError, match=r"sampling must be one of"):
        build_dataset({"type": "modelnet40", "root": str(root), "sampling": "uniform"})
    with pytest.raises(ConfigError, match="unknown dataset 'modelnet41'"):
        build_dataset({"type": "modelnet41"})
    with pytest.raises(ConfigError, match="needs a 'type'"):
        build_dataset({"root": str(root)})


# -- ScanObjectNN ------------------------------------------------------------------------------------------------

@pytest.fixture
def sonn(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = {}
    for sub, suffix, key in [("main_split", "", "obj_bg"), ("main_split_nobg", "", "obj_only"),
                             ("main_split", "_augmentedrot_scale75", "hardest")]:
        for split in ("training", "test"):
            data = (RNG.standard_normal((6, 128, 3)) * 0.4).astype(np.float32)
            arrays[f"{key}/{split}"] = data
            _write_h5(tmp_path / sub / f"{split}_objectdataset{suffix}.h5", data=data,
                      label=np.array([0, 14, 3, 3, 7, 1], dtype=np.int64), mask=np.zeros((6, 128)))
    return tmp_path, arrays


def test_scanobjectnn_variants(sonn) -> None:
    root, arrays = sonn
    for variant in ("obj_bg", "obj_only", "hardest"):
        for split, fname in (("train", "training"), ("test", "test")):
            ds = build_dataset({"type": "scanobjectnn", "root": str(root), "variant": variant, "split": split,
                                "npoints": 128})
            assert ds.classes == SCANOBJECTNN_CLASSES and ds.num_classes == 15
            assert ds.labels.tolist() == [0, 14, 3, 3, 7, 1]
            # not renormalised by default (like Point-MAE): exactly the stored points
            assert torch.equal(ds[4][0], torch.from_numpy(arrays[f"{variant}/{fname}"][4]))
    sub = build_dataset({"type": "scanobjectnn", "root": str(root / "main_split_nobg"), "variant": "obj_only",
                         "npoints": 32})
    assert sub[0][0].shape == (32, 3)
    sibling = build_dataset({"type": "scanobjectnn", "root": str(root / "main_split"), "variant": "obj_only",
                             "npoints": 128})  # the split folder of another variant: found beside it
    assert torch.equal(sibling[0][0], torch.from_numpy(arrays["obj_only/training"][0]))
    (root / "main_split_nobg" / "test_objectdataset.h5").unlink()
    with pytest.raises(DataError, match=r"obj_only test file not found: looked for main_split_nobg/"
                                        r"test_objectdataset.h5 under .*datasets/README.md"):
        build_dataset({"type": "scanobjectnn", "root": str(root), "variant": "obj_only", "split": "test"})


def test_scanobjectnn_bad_label(tmp_path: Path) -> None:
    _write_h5(tmp_path / "main_split" / "test_objectdataset.h5", data=_clouds(3, 8),
              label=np.array([0, 15, 2]))
    with pytest.raises(DataError, match=r"test_objectdataset.h5: label 15 at index 1 is outside 0..14"):
        build_dataset({"type": "scanobjectnn", "root": str(tmp_path), "split": "test", "npoints": 8})


# -- ShapeNet55 --------------------------------------------------------------------------------------------------

def test_shapenet55(tmp_path: Path) -> None:
    pc = tmp_path / "shapenet_pc"
    pc.mkdir()
    names = {"train": ["02691156-aaa.npy", "03001627-bbb.npy", "02691156-ccc.npy"], "test": ["04379243-ddd.npy"]}
    clouds = {}
    for split, files in names.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(files) + "\n")
        for f in files:
            clouds[f] = _clouds(1, 256)[0]
            np.save(pc / f, clouds[f])
    ds = build_dataset({"type": "shapenet55", "root": str(tmp_path), "npoints": 64})
    assert ds.classes == ["02691156", "03001627", "04379243"] and ds.labels.tolist() == [0, 1, 0]
    a, b = ds[1][0], ds[1][0]
    assert a.shape == (64, 3) and torch.equal(a, b)  # deterministic random subset
    src = pc_normalize(clouds["03001627-bbb.npy"])
    assert all(np.isclose(src, p).all(1).any() for p in a.numpy())
    full = build_dataset({"type": "shapenet55", "root": str(tmp_path), "npoints": 256, "split": "test"})
    assert full[0][1] == 2 and abs(np.linalg.norm(full[0][0].numpy(), axis=1).max() - 1) < 1e-5
    bad = _clouds(1, 256)[0]
    bad[10] = np.nan
    np.save(pc / "02691156-ccc.npy", bad)
    with pytest.raises(DataError, match=r"02691156-ccc.npy: shape 2 has NaN"):
        ds[2]
    (pc / "04379243-ddd.npy").unlink()
    with pytest.raises(DataError, match="04379243-ddd.npy does not exist"):
        build_dataset({"type": "shapenet55", "root": str(tmp_path), "split": "test"})


# -- few-shot ----------------------------------------------------------------------------------------------------

def test_fewshot_generate_and_read(tmp_path: Path) -> None:
    from pointpeft.data import generate_fewshot_folds
    from pointpeft.utils.safe_pickle import safe_load

    source = build_dataset({"type": "synthetic_shapes", "split": "train", "num_samples": 120, "npoints": 128})
    queries = build_dataset({"type": "synthetic_shapes", "split": "test", "num_samples": 60, "npoints": 128})
    out = tmp_path / "ModelNetFewshot"
    paths = generate_fewshot_folds(source, way=5, shot=3, folds=2, query_per_class=4, seed=1, out_dir=out)
    assert [p.relative_to(out).as_posix() for p in paths] == ["5way3shot/0.pkl", "5way3shot/1.pkl"]
    again = generate_fewshot_folds(source, way=5, shot=3, folds=2, query_per_class=4, seed=1,
                                   out_dir=tmp_path / "again")
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again))  # deterministic
    episode = safe_load(paths[0])
    assert sorted(episode) == ["test", "train"] and len(episode["train"]) == 15 and len(episode["test"]) == 20
    pts, label, orig = episode["train"][0]
    assert isinstance(pts, np.ndarray) and pts.dtype == np.float32 and type(label) is int and type(orig) is int
    for part, per in (("train", 3), ("test", 4)):
        assert np.bincount([t[1] for t in episode[part]]).tolist() == [per] * 5
    origs = {t[1]: t[2] for t in episode["train"]}
    assert all(origs[t[1]] == t[2] for t in episode["test"])
    # support and query are distinct clouds
    sup = {t[0].tobytes() for t in episode["train"]}
    assert not sup & {t[0].tobytes() for t in episode["test"]}

    ds = build_dataset({"type": "fewshot", "root": str(out), "way": 5, "shot": 3, "fold": 1, "split": "test",
                        "npoints": 64})
    assert len(ds) == 20 and ds.num_classes == 5 and ds[0][0].shape == (64, 3)
    assert ds.classes[ds.labels[0]] == source.classes[ds.original_labels[0]]
    # queries drawn from a second data set (Point-BERT: support from train, queries from test)
    p2 = generate_fewshot_folds(source, way=5, shot=10, folds=1, query_per_class=5, out_dir=tmp_path / "x",
                                query_dataset=queries)
    ep2 = safe_load(p2[0])
    q_bytes = {queries.get_points(i).tobytes() for i in range(len(queries))}
    assert all(t[0].tobytes() in q_bytes for t in ep2["test"])
    with pytest.raises(ConfigError, match="cannot make 13-way"):
        generate_fewshot_folds(source, way=13, shot=1, folds=1, out_dir=tmp_path / "y")


def test_fewshot_reads_point_bert_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "10way_20shot"  # Point-MAE's spelling of the folder
    folder.mkdir()
    train = [(_clouds(1, 96, c=6)[0], k % 10, np.int32(30 + k % 10)) for k in range(20)]
    test = [(_clouds(1, 96, c=6)[0], 3, np.int32(33))]
    with open(folder / "7.pkl", "wb") as f:
        pickle.dump({"train": train, "test": test}, f)
    ds = build_dataset({"type": "fewshot", "root": str(tmp_path), "way": 10, "shot": 20, "fold": 7,
                        "npoints": 32})
    assert len(ds) == 20 and ds.classes[3] == MODELNET40_CLASSES[33]
    pts = ds[5][0].numpy()
    src = pc_normalize(train[5][0][:, :3])
    idx = farthest_point_sample(torch.from_numpy(src)[None], 32)[0].numpy()
    np.testing.assert_array_equal(pts, src[idx])
    with open(folder / "8.pkl", "wb") as f:
        pickle.dump({"train": [(_clouds(1, 96)[0], 10, 3)], "test": []}, f)
    with pytest.raises(DataError, match=r"8.pkl: train\[0\]: label 10 is outside 0..9"):
        build_dataset({"type": "fewshot", "root": str(tmp_path), "way": 10, "shot": 20, "fold": 8, "npoints": 32})
    with pytest.raises(DataError, match="10way20shot/3.pkl"):
        build_dataset({"type": "fewshot", "root": str(tmp_path), "way": 10, "shot": 20, "fold": 3})


# -- loaders -----------------------------------------------------------------------------------------------------

def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_dataloader_reproducible_with_workers_and_transforms() -> None:
    ds = build_dataset({"type": "synthetic_shapes", "num_samples": 48, "npoints": 64,
                        "transforms": [{"type": "scale_translate"}, {"type": "jitter"}]})
    runs = [_batches(build_dataloader(ds, 8, shuffle=True, num_workers=2, seed=5)) for _ in range(2)]
    assert len(runs[0]) == 6
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*runs))
    other = _batches(build_dataloader(ds, 8, shuffle=True, num_workers=2, seed=6))
    assert not torch.equal(runs[0][0][1], other[0][1]) or not torch.equal(runs[0][0][0], other[0][0])
    x, y = runs[0][0]
    assert x.shape == (8, 64, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    plain = build_dataset({"type": "synthetic_shapes", "num_samples": 48, "npoints": 64})
    ordered = _batches(build_dataloader(plain, 16, shuffle=False, drop_last=True))
    assert torch.equal(ordered[0][0][3], plain[3][0]) and len(ordered) == 3


def test_dataloader_distributed_sampler(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    ds = build_dataset({"type": "synthetic_shapes", "num_samples": 24, "npoints": 32})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_dataloader(ds, 4, shuffle=True, seed=1, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 1
        loader.sampler.set_epoch(0)
        first = torch.cat([y for _, y in loader])
        assert sorted(first.tolist()) == sorted(ds.labels.tolist())
        order0 = list(loader.sampler)
        loader.sampler.set_epoch(1)
        assert list(loader.sampler) != order0 and sorted(order0) == list(range(24))
    finally:
        dist.destroy_process_group()


# -- the real ModelNet40 -----------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_modelnet40_h5(modelnet_h5_root: Path) -> None:
    train = build_dataset({"type": "modelnet40", "root": str(modelnet_h5_root), "split": "train", "npoints": 1024})
    test = build_dataset({"type": "modelnet40", "root": str(modelnet_h5_root.parent), "split": "test",
                          "npoints": 1024})
    assert len(train) == 9843 and len(test) == 1975 and train.num_classes == test.num_classes == 40
    assert train.classes[0] == "airplane" and train.classes[39] == "xbox"
    assert np.bincount(train.labels, minlength=40)[[0, 8, 39]].tolist() == [626, 889, 103]
    assert np.bincount(test.labels, minlength=40)[[0, 3]].tolist() == [80, 16]
    assert train.points.shape == (9843, 1024, 3) and train.points.dtype == np.float32
    with h5py.File(modelnet_h5_root / "ply_data_train0.h5") as f:
        raw, raw_label = f["data"][:5], f["label"][:5, 0]
    # already unit-sphere normalised and 1024 points: returned bit-exact
    for i in range(5):
        pts, label = train[i]
        assert torch.equal(pts, torch.from_numpy(raw[i])) and label == int(raw_label[i])
    fewer = build_dataset({"type": "modelnet40", "root": str(modelnet_h5_root), "split": "test", "npoints": 256,
                           "sampling": "first"})
    assert fewer[0][0].shape == (256, 3)


# -- preparation scripts -----------------------------------------------------------------------------------------

def test_prepare_scripts(mn_h5, tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    root, _, _ = mn_h5
    dest = tmp_path / "linked"
    run = subprocess.run([sys.executable, str(repo / "datasets" / "prepare_modelnet40.py"), "--source",
                          str(root / "modelnet40_ply_hdf5_2048"), "--dest", str(dest), "--npoints", "64"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (dest / "modelnet40_ply_hdf5_2048").is_symlink() and "[train] 10 shapes" in run.stdout
    out = tmp_path / "fs"
    run = subprocess.run([sys.executable, str(repo / "datasets" / "prepare_fewshot.py"), "--dataset",
                          "synthetic_shapes", "--out", str(out), "--ways", "3", "--shots", "2", "--folds", "2",
                          "--query", "4", "--npoints", "64"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ds = build_dataset({"type": "fewshot", "root": str(out), "way": 3, "shot": 2, "fold": 1, "split": "test",
                        "npoints": 64})
    assert len(ds) == 12 and set(ds.classes) <= set(build_dataset({"type": "synthetic_shapes"}).classes)
