"""Run an N-way K-shot sweep: one engine :class:`~pointpeft.engine.trainer.Trainer` run per (way, shot, fold),
trained on the fold's support set and evaluated on its query set, in ``<root>/fewshot/<method>/<way>w<shot>s/
fold<k>/``. Folds can run in parallel processes; a fold whose results.json says ``finished`` is not rerun and an
interrupted fold resumes from its ``ckpt-last.pth``."""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pointpeft.config import Config, load_config, set_value
from pointpeft.engine import train_state as ck
from pointpeft.errors import CheckpointError, ConfigError, PointPeftError
from pointpeft.fewshot.folds import ensure_folds
from pointpeft.fewshot.options import FewShotOptions
from pointpeft.fewshot.table import column_name, format_table, read_fold, summarize_method
from pointpeft.utils.io import atomic_write_json, atomic_write_text
from pointpeft.utils.misc import get_logger, setup_logging

log = get_logger("fewshot")

SOURCE = "<fewshot>"  # what cfg.source_of() says for keys the sweep sets
#: config keys that may differ between a finished fold and a rerun without making it another experiment
_VOLATILE = (("train", "threads"), ("train", "progress"), ("train", "device"), ("fewshot",))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def fold_run_dir(root: str | Path, method: str, way: int, shot: int, fold: int) -> Path:
    """``<root>/fewshot/<method>/<way>w<shot>s/fold<k>``."""
    return Path(root) / "fewshot" / method / column_name(way, shot) / f"fold{fold}"


def _set(cfg: Config, dotted: str, value: Any, source: str | None = None) -> None:
    """Set ``dotted`` in ``cfg`` (creating sections) and record who set it."""
    set_value(cfg, dotted, value, source or SOURCE)


def fold_config(cfg: Config, folds_root: str | Path, way: int, shot: int, fold: int,
                threads: int | None = None) -> Config:
    """The run config of one fold: ``data.train`` = the support set, ``data.val`` = the query set (both ``type:
    fewshot`` nodes, other keys such as transforms kept), ``model.num_classes`` = way."""
    out = Config(copy.deepcopy(cfg.to_dict()), sources=dict(cfg.sources))
    data = out.get("data") or {}
    for key, split in (("train", "train"), ("val", "test")):
        node = dict(data.get(key) or {"type": "fewshot"})
        if node.get("type", "fewshot") != "fewshot":
            raise ConfigError(f"{cfg.source_of(f'data.{key}')}: data.{key} of a few-shot config must be a "
                              f"'type: fewshot' node (the sweep fills root/way/shot/fold), got {node.get('type')!r}")
        node.update(type="fewshot", root=str(folds_root), way=way, shot=shot, fold=fold, split=split)
        _set(out, f"data.{key}", node)
    if (out.get("data") or {}).get("test") is not None:
        out["data"]["test"] = None  # the query set is the test set
    _set(out, "model.num_classes", way)
    if threads is not None and not (out.get("train") or {}).get("threads"):
        _set(out, "train.threads", int(threads))
    return out


def _identity(cfg: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(cfg))
    for path in _VOLATILE:
        node = out
        for p in path[:-1]:
            node = node.get(p) or {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "<root>"]


def check_same_run(run_dir: Path, cfg: Config, ckpt: str | None, saved: dict[str, Any] | None = None) -> None:
    """A fold folder may only be resumed or reused by the same experiment (same config, same pretrained file)."""
    if saved is None:
        path = run_dir / "config.yaml"
        if not path.is_file():
            return
        saved_cfg = load_config(path, check_top_level=False).to_dict()
        res = run_dir / "results.json"
        try:
            saved = json.loads(res.read_text()) if res.is_file() else None
        except json.JSONDecodeError:
            saved = None
    else:
        saved_cfg = saved.get("config") or {}
    diffs = _diff_keys(_identity(saved_cfg), _identity(cfg.to_dict()))
    want = str(ckpt) if ckpt else None
    if isinstance(saved, dict) and "pretrained" in saved and saved["pretrained"] != want:
        diffs.append(f"pretrained ({saved['pretrained']} vs {want})")
    if diffs:
        raise ConfigError(f"{run_dir} holds a run of another experiment (differs in {', '.join(diffs[:5])}); pass "
                          "--overwrite to redo it, or another --root / --name")


@dataclass
class FoldJob:
    """Everything a (possibly separate) process needs to train one fold."""

    method: str
    way: int
    shot: int
    fold: int
    run_dir: str
    config: dict[str, Any]
    sources: dict[str, str]
    ckpt: str | None
    log_level: int = 20


def run_fold(job: FoldJob) -> dict[str, Any]:
    """Train and evaluate one fold (resuming its ckpt-last.pth when there is one); returns its results."""
    from pointpeft.engine.trainer import Trainer

    cfg = Config(job.config, sources=job.sources)
    run_dir = Path(job.run_dir)
    state = None
    last = run_dir / ck.LAST_NAME
    if last.is_file():
        try:
            state = ck.read_train_state(last)
        except CheckpointError as e:
            log.warning("%s; training fold %d from the start", e, job.fold)
    if state is None and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("pointpeft")
    before = set(logger.handlers)
    setup_logging(job.log_level, log_file=run_dir / "train.log")
    try:
        trainer = Trainer(cfg, run_dir, ckpt=job.ckpt)
        if state is not None:
            trainer.restore(state, str(last))
        trainer.write_config()
        return trainer.fit()
    finally:  # this fold's train.log only gets this fold's lines
        for h in set(logger.handlers) - before:
            logger.removeHandler(h)
            h.close()


def _worker(job_dict: dict[str, Any]) -> dict[str, Any]:
    """Process-pool entry: errors come back as data so one bad fold does not stop the sweep."""
    job = FoldJob(**job_dict)
    setup_logging(job.log_level)
    try:
        res = run_fold(job)
        return {"status": "finished", "results": res}
    except PointPeftError as e:
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # noqa: BLE001 - a crash in one fold is reported with the others, traceback in the log
        log.exception("fold %s crashed", job.run_dir)
        return {"status": "failed", "error": f"{type(e).__name__}: {e} (traceback in {job.run_dir}/train.log)"}


@dataclass
class SweepReport:
    """What a sweep did: folds trained, skipped (finished before), failed (with the error)."""

    trained: list[str]
    skipped: list[str]
    failed: dict[str, str]
    summary: dict[str, Any]
    table: str
    elapsed_s: float


def plan_sweep(cfg: Config, method: str, opts: FewShotOptions, root: str | Path, ckpt: str | None,
               folds_root: Path, overwrite: bool = False, log_level: int = 20) -> tuple[list[FoldJob], list[str]]:
    """(fold jobs to run, run folders already finished). Checks that reused folders hold the same experiment."""
    jobs = max(1, int(opts.jobs))
    threads = max(1, available_cores() // jobs)
    todo, done = [], []
    for way, shot in opts.settings:
        for fold in opts.fold_ids:
            run_dir = fold_run_dir(root, method, way, shot, fold)
            fcfg = fold_config(cfg, folds_root, way, shot, fold, threads)
            if overwrite and run_dir.exists():
                shutil.rmtree(run_dir)
            finished = read_fold(run_dir)
            if finished is not None:
                check_same_run(run_dir, fcfg, ckpt, saved=finished)
                done.append(str(run_dir))
                continue
            check_same_run(run_dir, fcfg, ckpt)
            todo.append(FoldJob(method, way, shot, fold, str(run_dir), fcfg.to_dict(), dict(fcfg.sources),
                                str(ckpt) if ckpt else None, log_level))
    return todo, done


def run_sweep(cfg: Config, method: str, opts: FewShotOptions, root: str | Path = "experiments",
              ckpt: str | None = None, overwrite: bool = False, log_level: int = 20,
              extra: dict[str, Any] | None = None, folds_root: Path | None = None) -> SweepReport:
    """Make the episodes (when asked), train every pending fold, and write ``<root>/fewshot/<method>/fewshot.{json,
    md}`` and the all-methods table ``<root>/fewshot/table.{json,md}``. ``folds_root``: episodes already made."""
    t0 = time.time()
    folds_root = folds_root if folds_root is not None else ensure_folds(opts)
    todo, done = plan_sweep(cfg, method, opts, root, ckpt, folds_root, overwrite, log_level)
    log.info("few-shot %s: %d fold(s) to train, %d finished before (%s)", method, len(todo), len(done),
             ", ".join(column_name(w, s) for w, s in opts.settings))
    trained, failed = [], {}
    if opts.jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with ProcessPoolExecutor(max_workers=min(opts.jobs, len(todo)), mp_context=ctx) as pool:
            futures = {job.run_dir: pool.submit(_worker, asdict(job)) for job in todo}
            for run_dir, fut in futures.items():
                try:
                    out = fut.result()
                except Exception as e:  # noqa: BLE001 - e.g. a worker killed for memory (BrokenProcessPool)
                    out = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                _record(out, run_dir, trained, failed)
    else:
        for job in todo:
            _record(_worker(asdict(job)), job.run_dir, trained, failed)
    summary, table = write_summary(root, method, opts.report, {"folds_root": str(folds_root), "pretrained": ckpt,
                                                               "folds_requested": len(opts.fold_ids),
                                                               **(extra or {})})
    return SweepReport(trained, done, failed, summary, table, time.time() - t0)


def _record(out: dict[str, Any], run_dir: str, trained: list[str], failed: dict[str, str]) -> None:
    if out["status"] == "finished":
        trained.append(run_dir)
        acc = (out["results"].get("last") or {}).get("val_acc")
        log.info("finished %s: query acc %.2f", run_dir, acc if acc is not None else float("nan"))
    else:
        failed[run_dir] = out["error"]
        log.error("fold %s failed: %s", run_dir, out["error"])


def write_summary(root: str | Path, method: str, report: str = "last",
                  extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Recompute the method's summary from its fold folders; write it and the combined table; return both."""
    method_dir = Path(root) / "fewshot" / method
    summary = summarize_method(method_dir, method, report, extra)
    table = format_table([summary])
    atomic_write_json(method_dir / "fewshot.json", summary)
    atomic_write_text(method_dir / "fewshot.md", table)
    write_combined_table(Path(root) / "fewshot")
    return summary, table


def write_combined_table(fewshot_dir: Path) -> str:
    """``table.md``/``table.json`` over every method under ``fewshot_dir``, one table per episode source (rows
    from different folds are not comparable)."""
    from pointpeft.fewshot.table import collect_summaries

    rows = collect_summaries(fewshot_dir)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("folds_root", "?")), []).append(r)
    parts = []
    for src, group in groups.items():
        parts.append(f"Episodes: `{src}` (accuracy % on the query sets, mean ± std over folds)\n\n"
                     + format_table(group))
    text = "\n".join(parts)
    atomic_write_text(fewshot_dir / "table.md", text)
    atomic_write_json(fewshot_dir / "table.json", {"rows": rows})
    return text
