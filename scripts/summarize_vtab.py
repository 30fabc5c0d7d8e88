"""Summarise a VTAB-1k sweep: the paper's table of per-task top-1 accuracy with group and overall means.

Reads every ``results.json`` under the given folders (the trainer writes one per run:
``experiments/<config stem>/<exp>/results.json`` with a ``best`` mapping holding ``acc``), works out each run's task
and method, and prints one row per method::

    method | cifar ... sun397 | Natural | patch_camelyon ... | Specialized | clevr_count ... | Structured | Mean

VTAB groups: Natural = cifar..sun397 (7 tasks), Specialized = patch_camelyon..diabetic_retinopathy (4),
Structured = clevr_count..smallnorb_ele (8). ``Mean`` is the average of the three group means, the convention of
the VTAB-1k tables (VPT, NOAH, Adapter-X: full fine-tuning 68.9 = mean of 75.9 / 83.4 / 47.6); ``Mean (19)`` is the
plain average over the 19 tasks. A group mean needs all its tasks (``--partial`` averages the tasks present, marked
``*``). Several runs of one task and method (seeds) are averaged (``--reduce``).

How a run's task and method are found, first match wins:
1. ``results.json`` keys ``task`` / ``method``, or its ``config`` mapping (the resolved config);
2. a resolved config beside it (``config.yaml`` / ``config.json``): the ``vtab1k`` data set's ``task`` and the
   ``peft`` section (``type``, plus ``_x`` when ``x_mode`` is on: ``adaptformer_x``; no section = ``full``);
3. the path: a folder named like a VTAB task, and a folder or config stem named like a method.

    python scripts/summarize_vtab.py experiments                      # Markdown table on stdout
    python scripts/summarize_vtab.py experiments --out vtab.md --csv vtab.csv --json vtab.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointpeft.config import yaml_load
from pointpeft.data.vision.vtab import VTAB_GROUPS, VTAB_TASKS
from pointpeft.recipes import family_methods
from pointpeft.utils.io import atomic_write_json, atomic_write_text

GROUP_TITLES = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
#: row order of the paper's table (presentation only); methods not listed follow alphabetically
METHOD_ORDER = ("full", "linear", "vpt_deep", "lora", "adapter", "adaptformer", "adapterx", "adapter_x",
                "adaptformer_x")
#: the methods a run folder may be named after: every ViT recipe (cfgs/_base_/peft/vit/<method>.yaml, the one list
#: the config generator reads) and the row labels above ("adapter_x" is read from a config's x_mode)
KNOWN_METHODS = tuple(dict.fromkeys([*METHOD_ORDER, *family_methods("vit")]))
METRIC_FALLBACKS = ("acc", "test/acc", "val/acc", "test_acc", "val_acc", "top1", "acc1")
CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", "resolved_config.yaml")


@dataclass
class Run:
    path: Path
    task: str
    method: str
    acc: float  # percent


class SummaryError(ValueError):
    """A results file that cannot be placed in the table (named in the message)."""


# -- reading runs ------------------------------------------------------------------------------------------------
def method_label(peft: Mapping[str, Any] | None) -> str:
    """``full`` without a peft section; ``<type>_x`` when the plug-in switch ``x_mode`` is on."""
    if not peft:
        return "full"
    kind = str(peft.get("type") or peft.get("NAME") or "full").lower()
    return f"{kind}_x" if peft.get("x_mode") else kind


def _vtab_task_in(node: Any) -> str | None:
    """The ``task`` of the first ``type: vtab1k`` mapping inside ``node`` (depth first)."""
    if isinstance(node, Mapping):
        if str(node.get("type", "")).lower() == "vtab1k" and "task" in node:
            return str(node["task"])
        for value in node.values():
            found = _vtab_task_in(value)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _vtab_task_in(value)
            if found:
                return found
    return None


def _from_config(cfg: Any) -> tuple[str | None, str | None]:
    if not isinstance(cfg, Mapping):
        return None, None
    return _vtab_task_in(cfg.get("data", cfg)), method_label(cfg.get("peft"))


def _read_config_beside(folder: Path) -> Any:
    for name in CONFIG_NAMES:
        p = folder / name
        if p.is_file():
            text = p.read_text()
            return json.loads(text) if p.suffix == ".json" else yaml_load(text)
    return None


def _from_path(path: Path, methods: Iterable[str]) -> tuple[str | None, str | None]:
    parts = [p for p in path.parent.parts]
    task = next((p for p in reversed(parts) if p in VTAB_TASKS), None)
    known = set(methods)
    method = next((p for p in reversed(parts) if p in known), None)
    if method is None:  # "<task>_<method>" or "<method>_<task>" run names
        for p in reversed(parts):
            for m in sorted(known, key=len, reverse=True):
                if p.endswith(f"_{m}") or p.startswith(f"{m}_"):
                    method = m
                    break
            if method:
                break
    return task, method


def read_accuracy(results: Mapping[str, Any], metric: str, path: Path) -> float:
    """``results['best'][metric]`` (or a usual alias) in percent; a value <= 1 is taken as a fraction."""
    best = results.get("best", results)
    if not isinstance(best, Mapping):
        raise SummaryError(f"{path}: 'best' is a {type(best).__name__}, expected a mapping of metrics")
    keys = (metric, *[k for k in METRIC_FALLBACKS if k != metric])
    for key in keys:
        value = best.get(key)
        if isinstance(value, Mapping):  # {"acc": {"value": 91.2, "epoch": 40}}
            value = value.get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0 or value > 100:
                raise SummaryError(f"{path}: best {key} = {value!r} is not an accuracy")
            return 100.0 * value if value <= 1.0 else float(value)
    raise SummaryError(f"{path}: no accuracy in 'best' (looked for {list(keys)}; found {sorted(best)})")


def load_run(path: Path, metric: str = "acc", methods: Iterable[str] = KNOWN_METHODS) -> Run:
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SummaryError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, Mapping):
        raise SummaryError(f"{path}: expected a JSON object, got {type(results).__name__}")
    task, method = results.get("task"), results.get("method")
    if (task is None or method is None) and "config" in results:
        t, m = _from_config(results["config"])
        task, method = task or t, method or m
    if task is None or method is None:
        t, m = _from_config(_read_config_beside(path.parent))
        task, method = task or t, method or m
    if task is None or method is None:
        t, m = _from_path(path, methods)
        task, method = task or t, method or m
    if task not in VTAB_TASKS:
        raise SummaryError(f"{path}: cannot tell which VTAB-1k task this run is (found {task!r}); tasks: "
                           f"{list(VTAB_TASKS)}")
    if method is None:
        raise SummaryError(f"{path}: cannot tell which method this run used (no peft section, config or method "
                           "folder found)")
    return Run(path=path, task=task, method=str(method), acc=read_accuracy(results, metric, path))


def collect(roots: Sequence[Path], metric: str = "acc", strict: bool = False) -> tuple[list[Run], list[str]]:
    """Every results.json under ``roots``; files that cannot be placed are skipped with a reason (raised when
    ``strict``)."""
    runs, skipped = [], []
    for root in roots:
        if not root.exists():
            raise SummaryError(f"results folder not found: {root}")
        files = [root] if root.is_file() else sorted(root.rglob("results.json"))
        for f in files:
            try:
                runs.append(load_run(f, metric))
            except SummaryError as e:
                if strict:
                    raise
                skipped.append(str(e))
    return runs, skipped


# -- the table ---------------------------------------------------------------------------------------------------
def _reduce(values: list[float], how: str) -> float:
    if how == "max":
        return max(values)
    if how == "last":
        return values[-1]
    return sum(values) / len(values)


def build_table(runs: Sequence[Run], reduce: str = "mean", partial: bool = False) -> list[dict[str, Any]]:
    """One row per method: per-task accuracy, group means, ``mean`` (of group means), ``mean_tasks``, run counts.

    A group mean is None unless every task of the group has a result (``partial``: over the tasks present, and
    ``partial_groups`` names the groups averaged that way).
    """
    by: dict[str, dict[str, list[float]]] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        by.setdefault(r.method, {}).setdefault(r.task, []).append(r.acc)
    order = [m for m in METHOD_ORDER if m in by] + sorted(m for m in by if m not in METHOD_ORDER)
    rows = []
    for method in order:
        tasks = {t: _reduce(v, reduce) for t, v in by[method].items()}
        row: dict[str, Any] = {"method": method, "tasks": tasks, "runs": {t: len(v) for t, v in by[method].items()},
                               "groups": {}, "partial_groups": []}
        for group in VTAB_GROUPS:
            names = [t for t, (_, g) in VTAB_TASKS.items() if g == group]
            have = [tasks[t] for t in names if t in tasks]
            if have and (len(have) == len(names) or partial):
                row["groups"][group] = sum(have) / len(have)
                if len(have) < len(names):
                    row["partial_groups"].append(group)
            else:
                row["groups"][group] = None
        means = [v for v in row["groups"].values() if v is not None]
        row["mean"] = sum(means) / len(means) if len(means) == len(VTAB_GROUPS) else None
        row["mean_tasks"] = sum(tasks.values()) / len(tasks) if len(tasks) == len(VTAB_TASKS) else None
        if partial and means and row["mean"] is None:
            row["mean"] = sum(means) / len(means)
            row["partial_groups"].append("mean")
        rows.append(row)
    return rows


def columns() -> list[tuple[str, str]]:
    """(key, title) in the paper's order: each group's tasks followed by the group mean, then the means."""
    cols = []
    for group in VTAB_GROUPS:
        cols += [(f"task:{t}", t) for t, (_, g) in VTAB_TASKS.items() if g == group]
        cols.append((f"group:{group}", GROUP_TITLES[group]))
    return cols + [("mean", "Mean"), ("mean_tasks", "Mean (19)")]


def cell(row: Mapping[str, Any], key: str) -> tuple[float | None, bool]:
    """(value, partial?) of one column of a row."""
    if key.startswith("task:"):
        return row["tasks"].get(key[5:]), False
    if key.startswith("group:"):
        g = key[6:]
        return row["groups"][g], g in row["partial_groups"]
    return row[key], key == "mean" and "mean" in row["partial_groups"]


def _fmt(value: float | None, partial: bool, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}{'*' if partial else ''}"


def format_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 1) -> str:
    cols = columns()
    lines = ["| method | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(_fmt(*cell(row, k), digits) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[Mapping[str, Any]], digits: int = 2) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns()
    w.writerow(["method", *[t for _, t in cols]])
    for row in rows:
        w.writerow([row["method"], *[_fmt(*cell(row, k), digits) for k, _ in cols]])
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", type=Path, default=[Path("experiments")],
                    help="folders searched recursively for results.json (default: experiments)")
    ap.add_argument("--metric", default="acc", help="key of results.json's 'best' mapping (default: acc)")
    ap.add_argument("--reduce", choices=("mean", "max", "last"), default="mean",
                    help="several runs of one task and method: their mean (default), max or last by path")
    ap.add_argument("--partial", action="store_true", help="group means over the tasks present (marked *)")
    ap.add_argument("--strict", action="store_true", help="fail on a results file that cannot be placed")
    ap.add_argument("--digits", type=int, default=1, help="decimals in the Markdown table")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    ap.add_argument("--csv", type=Path, help="also write the table as CSV")
    ap.add_argument("--json", type=Path, help="also write rows (per-task values, run counts) as JSON")
    args = ap.parse_args(argv)
    try:
        runs, skipped = collect(args.roots, args.metric, args.strict)
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not runs:
        print(f"error: no VTAB-1k results.json under {[str(r) for r in args.roots]}", file=sys.stderr)
        return 1
    rows = build_table(runs, args.reduce, args.partial)
    table = format_markdown(rows, args.digits)
    print(table, end="")
    print(f"{len(runs)} run(s), {len(rows)} method(s)" + (f", {len(skipped)} file(s) skipped" if skipped else ""),
          file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, table)
    if args.csv:
        atomic_write_text(args.csv, format_csv(rows))
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
