"""Charts of runs: training curves, accuracy vs trainable parameters (the chart PEFT papers lead with), Adapter-X
expert usage per block, and few-shot results as a table.

A run is read from its ``results.json`` (or its folder) and, for curves, from TensorBoard event files when the
JSON has no history. Keys are looked up leniently, top level first, then inside ``metrics``/``test``/``final``/
``best``/``summary``; a key that is not found raises :class:`~pointpeft.errors.DataError` naming the file and the
keys tried:

* name: ``name`` | ``run_name`` | ``method``, else the resolved ``config``'s peft type (``<type>_x`` with
  ``x_mode``, ``full`` without a peft section, as scripts/summarize_vtab.py labels runs), else the folder's name;
* trainable parameters: ``trainable_params`` | ``params.trainable`` | ``trainable`` | ``parameters.trainable``;
  total: ``total_params`` | ``params.total`` | ``total``;
* accuracy: ``test_acc`` | ``acc`` | ``test/acc`` | ``accuracy`` | ``overall_accuracy`` | ``oa`` | ``top1`` |
  ``acc1`` | ``best_acc`` | ``val_acc`` | ``val/acc`` (or ``--metric``), e.g. the trainer's ``best.acc``;
* history: ``history`` as a list of per-epoch dicts or a dict of lists (``epoch``/``step`` is the x axis);
* expert usage: ``expert_usage`` (blocks x experts);
* few-shot: ``fewshot`` = ``{setting: {mean, std} | [acc per fold] | number}``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pointpeft.errors import DataError, InputError
from pointpeft.utils.io import atomic_write
from pointpeft.utils.misc import get_logger

logger = get_logger("viz")

NAME_KEYS = ("name", "run_name", "method", "peft.type", "config.peft.type", "peft_config.type")
TRAINABLE_KEYS = ("trainable_params", "params.trainable", "trainable", "parameters.trainable",
                  "trainable_parameters")
TOTAL_KEYS = ("total_params", "params.total", "total", "parameters.total")
ACC_KEYS = ("test_acc", "acc", "test/acc", "accuracy", "overall_accuracy", "oa", "top1", "acc1", "best_acc",
            "val_acc", "val/acc")
NESTS = ("", "metrics", "test", "final", "best", "summary", "results")
X_KEYS = ("epoch", "step", "iteration", "iter")
SKIP_CURVE_KEYS = {*X_KEYS, "time", "epoch_time", "seconds", "wall_time"}


@dataclass
class Run:
    """One run: where it came from, its JSON (may be empty) and its scalar history {metric: (x, y)}."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    history: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        found = lookup(self.data, NAME_KEYS[:3], nests=("",))
        if isinstance(found, str) and found:
            return found
        cfg = self.data.get("config")
        if isinstance(cfg, Mapping):  # the resolved config: its peft section names the method
            peft = cfg.get("peft")
            if not peft:
                return "full"
            kind = str(peft.get("type") or "full").lower()
            return f"{kind}_x" if peft.get("x_mode") else kind
        found = lookup(self.data, NAME_KEYS)
        if isinstance(found, str) and found:
            return found
        folder = self.path if self.path.is_dir() else self.path.parent
        return folder.name or str(self.path)


# -- reading ---------------------------------------------------------------------------------------------------

def _get_dotted(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def lookup(data: Mapping[str, Any], keys: Sequence[str], nests: Sequence[str] = NESTS) -> Any:
    """The first of ``keys`` found at the top level or inside one of ``nests`` (None when none is)."""
    for nest in nests:
        node = _get_dotted(data, nest) if nest else data
        if not isinstance(node, Mapping):
            continue
        for k in keys:
            v = _get_dotted(node, k)
            if v is not None:
                return v
    return None


def require_number(run: Run, keys: Sequence[str], what: str) -> float:
    """A finite number from ``run.data`` under one of ``keys``; DataError naming the file otherwise."""
    v = lookup(run.data, keys)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise DataError(f"{run.path}: no {what} (looked for {', '.join(keys)} at the top level and under "
                        f"{', '.join(n for n in NESTS if n)}); found {v!r}")
    return float(v)


def _event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("events.out.tfevents.*") if p.is_file())


def read_tensorboard(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalars {tag: (steps, values)} from a TensorBoard event file or every event file under a folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    p = Path(path)
    files = [p] if p.is_file() else _event_files(p)
    if not files:
        raise DataError(f"{p}: no TensorBoard event files (events.out.tfevents.*) found")
    out: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as e:  # corrupt / truncated record
            raise DataError(f"{f}: cannot read TensorBoard events ({e})") from None
        prefix = ""
        if p.is_dir() and f.parent != p:
            prefix = f.parent.relative_to(p).as_posix() + "/"
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(prefix + tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    res = {}
    for tag, pairs in out.items():
        pairs.sort()
        arr = np.asarray(pairs, dtype=np.float64)
        res[tag] = (arr[:, 0], arr[:, 1])
    return res


def history_from_json(data: Mapping[str, Any], source: str = "results") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{metric: (x, y)} from ``data['history']`` (a list of per-epoch dicts or a dict of equal-length lists)."""
    hist = data.get("history")
    if hist is None:
        return {}
    rows: list[Mapping[str, Any]]
    if isinstance(hist, Mapping):
        lengths = {k: len(v) for k, v in hist.items() if isinstance(v, list)}
        if not lengths:
            raise DataError(f"{source}: 'history' is a mapping without lists")
        n = max(lengths.values())
        rows = [{k: v[i] for k, v in hist.items() if isinstance(v, list) and i < len(v)} for i in range(n)]
    elif isinstance(hist, list):
        rows = hist
    else:
        raise DataError(f"{source}: 'history' must be a list of dicts or a dict of lists, got {type(hist).__name__}")
    series: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{source}: history[{i}] is {type(row).__name__}, expected a mapping")
        x = next((row[k] for k in X_KEYS if isinstance(row.get(k), int | float)), i)
        for k, v in _flatten(row).items():
            if k in SKIP_CURVE_KEYS or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if math.isfinite(v):
                series.setdefault(k, []).append((float(x), float(v)))
    return {k: (np.array([a for a, _ in s]), np.array([b for _, b in s])) for k, s in series.items()}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def load_run(path: str | os.PathLike, label: str | None = None, need_history: bool = False) -> Run:
    """A run from ``results.json``, a run folder (its results.json and/or event files) or an event file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    data: dict[str, Any] = {}
    json_path = p / "results.json" if p.is_dir() else (p if p.suffix == ".json" else None)
    if json_path is not None and json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{json_path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{json_path}: expected a JSON object, got {type(data).__name__}")
    elif p.is_file() and "tfevents" not in p.name:
        raise DataError(f"{p}: expected a results.json, a run folder or a TensorBoard event file")
    run = Run(json_path or p, data, label=label)
    run.history = history_from_json(data, str(run.path)) if data else {}
    if need_history and not run.history:
        folder = p if p.is_dir() else p.parent
        tb_source = p if "tfevents" in p.name else folder
        run.history = read_tensorboard(tb_source)
    return run


# -- drawing helpers -------------------------------------------------------------------------------------------

def _new_figure(size: tuple[float, float]):  # noqa: ANN202 - (fig, canvas)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, FigureCanvasAgg(fig)


def save_figure(fig: Any, out: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor="white"))
    logger.info("wrote %s", path)
    return path


def human_count(n: float) -> str:
    """1234 -> '1.2K', 22099752 -> '22.1M'."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


# -- training curves -------------------------------------------------------------------------------------------

def plot_curves(runs: Sequence[Run], out: str | os.PathLike, metrics: Sequence[str] | None = None,
                max_panels: int = 6) -> Path:
    """One subplot per metric (all numeric history keys by default, losses first), one line per run."""
    if not runs:
        raise InputError("plot curves: no runs given")
    for r in runs:
        if not r.history:
            raise DataError(f"{r.path}: no training history (no 'history' in the JSON, no TensorBoard scalars)")
    available = sorted({m for r in runs for m in r.history})
    if metrics:
        missing = [m for m in metrics if m not in available]
        if missing:
            raise InputError(f"metric(s) {missing} not in any run; available: {available}")
        chosen = list(metrics)
    else:
        chosen = sorted(available, key=lambda m: (0 if "loss" in m.lower() else 1 if "acc" in m.lower() else 2, m))
        if len(chosen) > max_panels:
            logger.info("plot curves: showing %d of %d metrics (%s); pick others with --metrics", max_panels,
                        len(chosen), ", ".join(chosen[max_panels:]))
            chosen = chosen[:max_panels]
    ncols = min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig, _ = _new_figure((4.2 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, metric in zip(axes.flat, chosen):
        for r in runs:
            if metric in r.history:
                x, y = r.history[metric]
                ax.plot(x, y, label=r.name, marker="o" if len(x) <= 20 else None, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel("epoch / step")
        ax.grid(alpha=0.3)
        if "loss" in metric.lower() and all(v > 0 for r in runs if metric in r.history for v in r.history[metric][1]):
            ax.set_yscale("log")
    for ax in axes.flat[len(chosen):]:
        ax.set_visible(False)
    if len(runs) > 1 or runs[0].name:
        axes.flat[0].legend(fontsize=8)
    return save_figure(fig, out)


# -- accuracy vs trainable parameters --------------------------------------------------------------------------

@dataclass
class ParamPoint:
    label: str
    trainable: float
    accuracy: float
    total: float | None = None


def param_points(runs: Sequence[Run], metric: str | None = None) -> list[ParamPoint]:
    """(label, trainable params, accuracy, total) per run from their results."""
    keys = (metric,) if metric else ACC_KEYS
    pts = []
    for r in runs:
        trainable = require_number(r, TRAINABLE_KEYS, "trainable parameter count")
        acc = require_number(r, keys, f"accuracy ({metric})" if metric else "accuracy")
        total = lookup(r.data, TOTAL_KEYS)
        pts.append(ParamPoint(r.name, trainable, acc, float(total) if isinstance(total, int | float) else None))
    return pts


def plot_accuracy_vs_params(points: Sequence[ParamPoint], out: str | os.PathLike, title: str | None = None,
                            ylabel: str = "accuracy (%)") -> Path:
    """Accuracy against trainable parameters on a log x axis, every point labelled; a top axis gives the share of
    the full model when the runs know their total parameter count."""
    if not points:
        raise InputError("plot params: no runs given")
    bad = [p.label for p in points if p.trainable <= 0]
    if bad:
        raise DataError(f"plot params: trainable parameter count must be > 0 (runs {bad})")
    from matplotlib.ticker import FuncFormatter

    fig, _ = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    xs = np.array([p.trainable for p in points])
    ys = np.array([p.accuracy for p in points])
    from pointpeft.viz.colors import categorical_colors

    colors = categorical_colors(len(points))
    for p, c in zip(points, colors):
        ax.scatter([p.trainable], [p.accuracy], s=60, color=c, edgecolor="black", linewidth=0.6, zorder=3)
        ax.annotate(p.label, (p.trainable, p.accuracy), textcoords="offset points", xytext=(6, 5), fontsize=9)
    ax.set_xscale("log")
    lo, hi = xs.min(), xs.max()
    ax.set_xlim(lo / 2.5, hi * 2.5)
    span = max(float(ys.max() - ys.min()), 1e-6)
    ax.set_ylim(ys.min() - 0.15 * span - 0.05, ys.max() + 0.2 * span + 0.05)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(v)))
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    totals = {p.total for p in points if p.total}
    if len(totals) == 1:
        total = totals.pop()
        sec = ax.secondary_xaxis("top", functions=(lambda v: v / total * 100, lambda v: v * total / 100))
        sec.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        sec.set_xlabel(f"share of the full model ({human_count(total)} parameters)")
    ax.set_title(title or "accuracy vs trainable parameters", fontsize=11)
    return save_figure(fig, out)



def plot_accuracy_vs_clouds(series: Mapping[str, Mapping[int, float]], out: str | os.PathLike,
                            title: str | None = None, ylabel: str = "accuracy (%)") -> Path:
    """Data efficiency: one line per method, accuracy against training clouds per class (log x axis)."""
    if not series or not any(series.values()):
        raise InputError("plot clouds: no points given")
    from matplotlib.ticker import FuncFormatter

    from pointpeft.viz.colors import categorical_colors

    fig, _ = _new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    sizes = sorted({n for pts in series.values() for n in pts})
    bad = [n for n in sizes if n <= 0]
    if bad:
        raise DataError(f"plot clouds: clouds per class must be > 0, got {bad}")
    for (label, pts), c in zip(series.items(), categorical_colors(len(series))):
        xs = sorted(pts)
        ax.plot(xs, [pts[n] for n in xs], marker="o", color=c, label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("training clouds per class (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    ax.set_title(title or "accuracy vs training clouds", fontsize=11)
    return save_figure(fig, out)

# -- expert usage ----------------------------------------------------------------------------------------------

def plot_expert_usage(usage: np.ndarray, out: str | os.PathLike, title: str | None = None) -> Path:
    """Heat map of the fraction of sub-tokens each expert receives per block (rows sum to 1); the colour scale is
    centred on the balanced share 1/E."""
    u = np.asarray(usage, dtype=np.float64)
    if u.ndim != 2 or u.size == 0:
        raise InputError(f"expert usage must be a (blocks, experts) array, got shape {u.shape}")
    if not np.isfinite(u).all() or (u < 0).any():
        raise InputError("expert usage must be finite and non-negative")
    nb, ne = u.shape
    fig, _ = _new_figure((max(4.5, 0.5 * ne + 2.2), max(3.0, 0.38 * nb + 1.6)))
    ax = fig.add_subplot()
    vmax = max(float(u.max()), 2.0 / ne)
    im = ax.imshow(u, cmap="magma_r", vmin=0.0, vmax=vmax, aspect="auto")
    if nb * ne <= 200:
        for (b, e), v in np.ndenumerate(u):
            ax.text(e, b, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * vmax else "black")
    ax.set_xticks(range(ne))
    ax.set_yticks(range(nb))
    ax.set_xlabel("expert")
    ax.set_ylabel("block")
    cb = fig.colorbar(im, ax=ax, fraction=0.05)
    cb.set_label(f"share of sub-tokens (balanced: {1 / ne:.3f})")
    ax.set_title(title or "Adapter-X expert usage per block", fontsize=11)
    return save_figure(fig, out)


def usage_from_run(run: Run) -> np.ndarray:
    u = lookup(run.data, ("expert_usage",))
    if u is None:
        raise DataError(f"{run.path}: no 'expert_usage' (a blocks x experts list) in the results")
    arr = np.asarray(u, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{run.path}: 'expert_usage' must be a list of per-block lists, got shape {arr.shape}")
    return arr


# -- few-shot table --------------------------------------------------------------------------------------------

def fewshot_cells(run: Run) -> dict[str, tuple[float, float | None]]:
    """{setting: (mean, std or None)} from ``fewshot`` in the results."""
    fs = lookup(run.data, ("fewshot",))
    if not isinstance(fs, Mapping) or not fs:
        raise DataError(f"{run.path}: no 'fewshot' mapping {{setting: {{mean, std}} | [accs] | acc}} in the results")
    out: dict[str, tuple[float, float | None]] = {}
    for setting, v in fs.items():
        where = f"{run.path}: fewshot.{setting}"
        if isinstance(v, Mapping) and "mean" in v:
            mean, std = v["mean"], v.get("std")
            if isinstance(mean, bool) or not isinstance(mean, int | float):
                raise DataError(f"{where}: 'mean' must be a number, got {mean!r}")
            out[str(setting)] = (float(mean), float(std) if isinstance(std, int | float) else None)
            continue
        if isinstance(v, Mapping) and "accs" in v:
            v = v["accs"]
        if isinstance(v, list):
            try:
                arr = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: a list of per-fold accuracies must hold numbers") from None
            if arr.ndim != 1 or arr.size == 0:
                raise DataError(f"{where}: expected a non-empty list of per-fold accuracies")
            out[str(setting)] = (float(arr.mean()), float(arr.std()) if arr.size > 1 else None)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[str(setting)] = (float(v), None)
        else:
            raise DataError(f"{where}: must be {{mean, std}}, {{accs: [...]}}, a list of accuracies or a number")
    return out


_SETTING_ORDER = ("5way10shot", "5way20shot", "10way10shot", "10way20shot")


def plot_fewshot_table(rows: Mapping[str, Mapping[str, tuple[float, float | None]]], out: str | os.PathLike,
                       title: str | None = None) -> Path:
    """A table figure: one row per run, one column per N-way K-shot setting, 'mean ± std', best mean in bold."""
    if not rows:
        raise InputError("plot fewshot: no runs given")
    settings = sorted({s for r in rows.values() for s in r},
                      key=lambda s: (_SETTING_ORDER.index(s) if s in _SETTING_ORDER else len(_SETTING_ORDER), s))
    names = list(rows)
    best = {s: max((rows[n][s][0] for n in names if s in rows[n]), default=None) for s in settings}
    cells = []
    for n in names:
        line = []
        for s in settings:
            if s not in rows[n]:
                line.append("—")
                continue
            m, sd = rows[n][s]
            line.append(f"{m:.1f} ± {sd:.1f}" if sd is not None else f"{m:.1f}")
        cells.append(line)
    fig, _ = _new_figure((2.4 + 1.55 * len(settings), 0.55 + 0.32 * (len(names) + 1)))
    ax = fig.add_subplot()
    ax.set_axis_off()
    table = ax.table(cellText=cells, rowLabels=names, colLabels=settings, cellLoc="center",
                     bbox=(0.22, 0.0, 0.78, 1.0))
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8ee")
        elif c >= 0:
            s = settings[c]
            val = rows[names[r - 1]].get(s)
            if val is not None and best[s] is not None and np.isclose(val[0], best[s]):
                cell.set_text_props(weight="bold")
    ax.set_title(title or "few-shot accuracy (%)", fontsize=11)
    return save_figure(fig, out)
