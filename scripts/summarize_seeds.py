#!/usr/bin/env python
"""Mean ± std over seeds of finished runs, one row per method, as a markdown table (and JSON with --json):

    python scripts/summarize_seeds.py experiments/adapterx/modelnet40 experiments/full/modelnet40
"""

from __future__ import annotations

import argparse
import json
import sys

from pointpeft.engine.summary import collect, markdown_table
from pointpeft.errors import PointPeftError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run folders, parents of run folders, or results.json files")
    ap.add_argument("--json", help="also write the rows (method, accs, params) to this JSON file")
    ap.add_argument("--all", action="store_true", help="include unfinished runs")
    args = ap.parse_args(argv)
    try:
        rows = collect(args.paths, finished_only=not args.all)
    except PointPeftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no finished classification runs under the given paths", file=sys.stderr)
        return 1
    print(markdown_table(rows), end="")
    if args.json:
        out = [{"method": r.label, "acc": r.values("acc"), "mean_class_acc": r.values("mean_class_acc"),
                "trainable": r.trainable, "percent": r.percent, "runs": [str(p.parent) for p in r.paths]}
               for r in rows]
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
