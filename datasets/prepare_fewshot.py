#!/usr/bin/env python
"""Write few-shot episodes in Point-BERT's layout: ``<out>/<way>way<shot>shot/<fold>.pkl``.

Each fold picks ``way`` classes, ``shot`` support clouds per class from the train split and ``--query`` query
clouds per class from the test split (Point-BERT's protocol; ``--query-from train`` takes them from the rest of
the train split instead). Deterministic in ``--seed``. The pickles hold only numpy arrays and ints.

    python datasets/prepare_fewshot.py --root datasets/ModelNet40                  # 5/10 way x 10/20 shot x 10
    python datasets/prepare_fewshot.py --dataset synthetic_shapes --out datasets/SyntheticFewshot

If you have Point-BERT's released ModelNetFewshot folder, use it as it is instead (``type: fewshot``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pointpeft.data import build_dataset, generate_fewshot_folds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="modelnet40", help="registered data set type (modelnet40, "
                    "scanobjectnn, synthetic_shapes, ...)")
    ap.add_argument("--root", default="datasets/ModelNet40", help="its root (ignored by synthetic_shapes)")
    ap.add_argument("--out", type=Path, default=REPO / "datasets" / "ModelNetFewshot")
    ap.add_argument("--ways", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--shots", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--query", type=int, default=20, help="query clouds per class")
    ap.add_argument("--query-from", choices=("test", "train"), default="test")
    ap.add_argument("--npoints", type=int, default=1024, help="points stored per cloud")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    node = {"type": args.dataset, "npoints": args.npoints}
    if args.dataset != "synthetic_shapes":
        node["root"] = args.root
    support = build_dataset({**node, "split": "train"})
    query = build_dataset({**node, "split": "test"}) if args.query_from == "test" else None
    print(f"support source: {len(support)} clouds, {support.num_classes} classes; queries from "
          f"{args.query_from} ({len(query) if query is not None else len(support)} clouds)")
    for way in args.ways:
        for shot in args.shots:
            paths = generate_fewshot_folds(support, way, shot, folds=args.folds, query_per_class=args.query,
                                           seed=args.seed, out_dir=args.out, query_dataset=query)
            print(f"{way:>3}-way {shot:>3}-shot: {len(paths)} folds in {paths[0].parent}")


if __name__ == "__main__":
    main()
