"""Per-method few-shot summaries (mean ± std over folds) read back from the fold run folders, and the table
``method | 5w10s | 5w20s | 10w10s | 10w20s`` in markdown. Everything is recomputed from ``results.json`` files on
disk, so an interrupted or extended sweep always reports exactly the folds that finished."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pointpeft.utils.misc import get_logger

log = get_logger("fewshot")

STANDARD_SETTINGS = ((5, 10), (5, 20), (10, 10), (10, 20))
_SETTING_DIR = re.compile(r"^(\d+)w(\d+)s$")
_FOLD_DIR = re.compile(r"^fold(\d+)$")


def setting_key(way: int, shot: int) -> str:
    """The JSON key of a setting (``5way10shot``, the episode folder's name)."""
    return f"{way}way{shot}shot"


def column_name(way: int, shot: int) -> str:
    """The table column / run sub-folder of a setting (``5w10s``)."""
    return f"{way}w{shot}s"


def fold_accuracy(results: Mapping[str, Any], report: str = "last") -> float | None:
    """The query accuracy of one finished fold: the last epoch's (default) or the best epoch's (the originals)."""
    if report == "best":
        acc = (results.get("best") or {}).get("acc")
    else:
        acc = (results.get("last") or {}).get("val_acc")
    return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def read_fold(run_dir: Path) -> dict[str, Any] | None:
    """The fold's results.json when it holds a finished run, else None."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        log.warning("%s: unreadable results.json; the fold counts as not finished", path)
        return None
    return res if isinstance(res, dict) and res.get("status") == "finished" else None


def mean_std(accs: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's default, as the originals' scripts)."""
    arr = np.asarray(accs, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def summarize_method(method_dir: str | Path, name: str | None = None, report: str = "last",
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{name, report, fewshot: {5way10shot: {mean, std, n, folds, accs}}, params}`` over the finished folds of
    ``method_dir/<way>w<shot>s/fold<k>/`` (the layout tools/fewshot.py writes)."""
    method_dir = Path(method_dir)
    out: dict[str, Any] = {"name": name or method_dir.name, "report": report, "fewshot": {}}
    settings = []
    for d in method_dir.iterdir() if method_dir.is_dir() else ():
        m = _SETTING_DIR.match(d.name)
        if m and d.is_dir():
            settings.append((int(m.group(1)), int(m.group(2)), d))
    for way, shot, d in sorted(settings):
        folds, accs = [], []
        for f in sorted(d.iterdir(), key=lambda p: p.name):
            fm = _FOLD_DIR.match(f.name)
            res = read_fold(f) if fm else None
            acc = fold_accuracy(res, report) if res else None
            if acc is None:
                continue
            folds.append(int(fm.group(1)))
            accs.append(acc)
            out.setdefault("params", res.get("params"))
            out.setdefault("method", res.get("method"))
        if accs:
            order = np.argsort(folds)
            folds, accs = [folds[i] for i in order], [accs[i] for i in order]
            mean, std = mean_std(accs)
            out["fewshot"][setting_key(way, shot)] = {"mean": mean, "std": std, "n": len(accs), "folds": folds,
                                                       "accs": accs}
    out.update(extra or {})
    return out


def _parse_key(key: str) -> tuple[int, int] | None:
    m = re.match(r"^(\d+)way(\d+)shot$", key)
    return (int(m.group(1)), int(m.group(2))) if m else None


def table_settings(rows: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The four standard settings, then any other setting a row has, by (way, shot)."""
    extra = {_parse_key(k) for r in rows for k in (r.get("fewshot") or {})} - {None} - set(STANDARD_SETTINGS)
    return list(STANDARD_SETTINGS) + sorted(extra)  # type: ignore[arg-type]


def format_cell(cell: Mapping[str, Any] | None, expected_folds: int | None = None) -> str:
    """``96.3 ± 2.5``; ``(n=3)`` is appended when fewer folds than expected finished; ``—`` when none did."""
    if not cell:
        return "—"
    text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    if expected_folds is not None and cell.get("n", expected_folds) < expected_folds:
        text += f" (n={cell['n']})"
    return text


def format_table(rows: Sequence[Mapping[str, Any]], expected_folds: int | None = 10,
                 settings: Sequence[tuple[int, int]] | None = None) -> str:
    """A markdown table, one row per method summary (:func:`summarize_method`)."""
    settings = list(settings) if settings is not None else table_settings(rows)
    head = "| method | " + " | ".join(column_name(w, s) for w, s in settings) + " |"
    sep = "|---|" + "---|" * len(settings)
    lines = [head, sep]
    for r in rows:
        expected = r.get("folds_requested", expected_folds)
        cells = [format_cell((r.get("fewshot") or {}).get(setting_key(w, s)), expected) for w, s in settings]
        lines.append(f"| {r.get('name', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_differences(rows: Sequence[Mapping[str, Any]], reference: str,
                       settings: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Each row's per-fold accuracy minus ``reference``'s on the same folds (the rows must share their episodes:
    one sweep's folds root). A fold's spread is mostly the episode's difficulty, which pairing cancels, so this
    separates methods that the mean ± std cells cannot. ``[{name, <key>: {mean, std, n, won, tied, lost}}]``."""
    ref = next((r for r in rows if r.get("name") == reference), None)
    if ref is None:
        return []
    out = []
    for r in rows:
        if r is ref:
            continue
        diffs: dict[str, Any] = {"name": r.get("name", "?")}
        for way, shot in settings:
            key = setting_key(way, shot)
            mine, theirs = (r.get("fewshot") or {}).get(key), (ref.get("fewshot") or {}).get(key)
            if not mine or not theirs:
                continue
            ref_acc = dict(zip(theirs["folds"], theirs["accs"]))
            d = [a - ref_acc[f] for f, a in zip(mine["folds"], mine["accs"]) if f in ref_acc]
            if d:
                mean, std = mean_std(d)
                diffs[key] = {"mean": mean, "std": std, "n": len(d), "won": sum(x > 0 for x in d),
                              "tied": sum(x == 0 for x in d), "lost": sum(x < 0 for x in d)}
        out.append(diffs)
    return out


def format_paired_table(diffs: Sequence[Mapping[str, Any]], reference: str,
                        settings: Sequence[tuple[int, int]]) -> str:
    """Markdown of :func:`paired_differences`: ``+2.6 ± 2.2 (8/1/1)`` = mean ± std of the per-fold differences to
    ``reference`` in points, then the folds won / tied / lost."""
    lines = [f"| method − {reference} | " + " | ".join(column_name(w, s) for w, s in settings) + " |",
             "|---|" + "---:|" * len(settings)]
    for d in diffs:
        cells = []
        for w, s in settings:
            c = d.get(setting_key(w, s))
            cells.append(f"{c['mean']:+.1f} ± {c['std']:.1f} ({c['won']}/{c['tied']}/{c['lost']})" if c else "—")
        lines.append(f"| {d['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collect_summaries(fewshot_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``<fewshot_dir>/*/fewshot.json`` summary (one per method / protocol row), sorted by name."""
    rows = []
    for path in sorted(Path(fewshot_dir).glob("*/fewshot.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            log.warning("%s: unreadable summary, left out of the table", path)
            continue
        for row in data.get("rows", [data]):
            rows.append(row)
    return rows
