#!/usr/bin/env python
"""Point pointpeft at a ModelNet40 copy you already have, check it, and optionally build the FPS cache.

Nothing is downloaded. Examples (from the repository root):

    # link the 1024-point HDF5 copy next to the repository into datasets/ModelNet40/
    python datasets/prepare_modelnet40.py --source ../shared/data/modelnet40_ply_hdf5_1024
    # a modelnet40_normal_resampled/ txt copy: link it and resample every shape once into an .npy cache
    python datasets/prepare_modelnet40.py --source /data/modelnet40_normal_resampled --fps-cache --npoints 1024
    # only check what a root holds (counts per split and class)
    python datasets/prepare_modelnet40.py --root datasets/ModelNet40 --check

Configs then use ``data.train: {type: modelnet40, root: datasets/ModelNet40, split: train, npoints: 1024}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pointpeft.data.modelnet40 import ModelNet40  # noqa: E402
from pointpeft.errors import PointPeftError  # noqa: E402


def link(source: Path, dest_root: Path) -> Path:
    """Symlink ``source`` (a layout folder) as ``dest_root/<its name>``; an existing identical link is kept."""
    source = source.expanduser().resolve()
    if not source.exists():
        raise SystemExit(f"--source {source} does not exist")
    dest_root.mkdir(parents=True, exist_ok=True)
    target = dest_root / source.name
    if target.is_symlink() and target.resolve() == source:
        print(f"already linked: {target} -> {source}")
        return target
    if target.exists() or target.is_symlink():
        raise SystemExit(f"{target} already exists and is not a link to {source}; remove it or pick --dest")
    try:
        os.symlink(source, target, target_is_directory=True)
    except OSError as e:  # e.g. no symlink permission: point the config at the source instead
        print(f"could not link ({e}); use root: {source} in your config instead")
        return source
    print(f"linked {target} -> {source}")
    return target


def check(root: Path, npoints: int, num_category: int, fps_cache: bool, cache_dir: str | None) -> int:
    """Load every split, print counts; returns the number of splits that failed."""
    failures = 0
    for split in ("train", "test"):
        try:
            ds = ModelNet40(root=root, split=split, npoints=npoints, num_category=num_category, cache=fps_cache,
                            cache_dir=cache_dir)
        except PointPeftError as e:
            print(f"[{split}] ERROR: {e}")
            failures += 1
            continue
        counts = ds.class_counts()
        print(f"[{split}] {len(ds)} shapes, {ds.num_classes} classes, {npoints} points, layout {ds.layout} "
              f"({ds.folder})")
        row = ", ".join(f"{c} {n}" for c, n in zip(ds.classes, counts))
        print(f"  per class: {row}")
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="an existing layout folder to link into --dest")
    ap.add_argument("--dest", type=Path, default=REPO / "datasets" / "ModelNet40", help="data root to link into")
    ap.add_argument("--root", type=Path, help="check this root instead of --dest (no linking)")
    ap.add_argument("--npoints", type=int, default=1024)
    ap.add_argument("--num-category", type=int, default=40, choices=(10, 40))
    ap.add_argument("--fps-cache", action="store_true",
                    help="txt layout: resample every shape once (FPS) and write the .npy cache")
    ap.add_argument("--cache-dir", help="where the FPS cache goes (default: beside the data)")
    ap.add_argument("--check", action="store_true", help="load and count (default when nothing else is asked)")
    args = ap.parse_args()

    root = args.root
    if args.source is not None:
        linked = link(args.source, args.dest)
        root = args.dest if linked.parent == args.dest else linked
    root = root or args.dest
    if args.check or args.fps_cache or args.source is not None or args.root is not None:
        sys.exit(1 if check(root, args.npoints, args.num_category, args.fps_cache, args.cache_dir) else 0)
    ap.print_help()


if __name__ == "__main__":
    main()
