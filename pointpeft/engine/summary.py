"""Tables from run folders: group ``results.json`` files by method, mean ± std over seeds. Shared by
scripts/summarize_seeds.py and scripts/sweep.py, so every number in a published table comes from the runs' files."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pointpeft.errors import DataError


def method_label(results: dict[str, Any]) -> str:
    """``adapterx``, ``adaptformer_x`` (x_mode), ``full``... from a run's resolved config; a config that sets
    ``exp_name`` (a variant such as ``adapterx_per_block``) is labelled by it."""
    cfg = results.get("config") or {}
    if cfg.get("exp_name"):
        return str(cfg["exp_name"])
    peft = cfg.get("peft") or {"type": results.get("method") or "full"}
    kind = str(peft.get("type") or "full").lower()
    return f"{kind}_x" if peft.get("x_mode") else kind


def _first_seen(values: Iterable[str]) -> list[str]:
    """The distinct values in first-seen order."""
    return list(dict.fromkeys(values))


@dataclass
class Row:
    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def values(self, key: str, section: str = "best") -> list[float]:
        """``key`` of every run's ``best`` (``acc``...) or ``last`` section; ``last`` is the final history row,
        where evaluation metrics are ``val_<key>``."""
        out = []
        for r in self.runs:
            node = r.get(section)
            if not isinstance(node, dict):
                continue
            v = node.get(key, node.get(f"val_{key}"))
            if isinstance(v, int | float) and not isinstance(v, bool):
                out.append(float(v))
        return out

    @property
    def trainable(self) -> int:
        return int(self.runs[0]["params"]["trainable"])

    @property
    def percent(self) -> float:
        return float(self.runs[0]["params"]["percent"])

    @property
    def commits(self) -> list[str]:
        """The short commits the runs started (and resumed) on; ``+`` marks a tree with uncommitted changes."""
        return _first_seen(str(c or "?")[:7] + ("+" if str(c).endswith("-dirty") else "")
                           for r in self.runs for c in r.get("git_commits") or [r.get("git_commit") or "?"])

    @property
    def cpu_kinds(self) -> list[str]:
        """The CPU kinds (``amd-avx2``...) the runs ran on: ``s/epoch`` compares only within one."""
        return _first_seen(str((r.get("machine") or {}).get("cpu_kind") or "?") for r in self.runs)

    @property
    def seconds_per_epoch(self) -> float:
        times = [h["time_s"] for r in self.runs for h in r.get("history", []) if "time_s" in h]
        return statistics.median(times) if times else float("nan")


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def read_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read results ({e})") from None
    if not isinstance(data, dict) or "params" not in data or "best" not in data:
        raise DataError(f"{path}: not a results.json written by the trainer (no params/best)")
    return data


def collect(paths: Iterable[str | Path], finished_only: bool = True) -> list[Row]:
    """Rows in first-seen order; a folder argument is searched for results.json files recursively."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("results.json")) if p.is_dir() else [p]
    rows: dict[str, Row] = {}
    for f in files:
        data = read_results(f)
        if finished_only and data.get("status") != "finished":
            continue
        if data.get("task", "classification") != "classification":
            continue
        row = rows.setdefault(method_label(data), Row(method_label(data)))
        row.runs.append(data)
        row.paths.append(f)
    return list(rows.values())


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| method | trainable params | trainable % | accuracy (%) | mean-class acc (%) | seeds | s/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r.trainable):
        lines.append(f"| {r.label} | {r.trainable:,} | {r.percent:.2f} | {mean_std(r.values('acc'))} | "
                     f"{mean_std(r.values('mean_class_acc'))} | {len(r.runs)} | {r.seconds_per_epoch:.0f} |")
    return "\n".join(lines) + "\n"


def last_best_table(rows: Sequence[Row]) -> str:
    """The results table with the last epoch as the main number and the best epoch beside it, labelled (the
    originals report the best epoch on the test split; a last-epoch number involves no choice on it)."""
    lines = ["| method | trainable params | trainable % | **last-epoch acc (%)** | best-epoch acc (%) | "
             "last-epoch mean-class acc (%) | seeds | commit | s/epoch | cpu |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in sorted(rows, key=lambda r: r.trainable):
        lines.append(f"| {r.label} | {r.trainable:,} | {r.percent:.2f} | {mean_std(r.values('acc', 'last'))} | "
                     f"{mean_std(r.values('acc'))} | {mean_std(r.values('mean_class_acc', 'last'))} | "
                     f"{len(r.runs)} | {' '.join(r.commits)} | {r.seconds_per_epoch:.0f} | {' '.join(r.cpu_kinds)} |")
    return "\n".join(lines) + "\n"
