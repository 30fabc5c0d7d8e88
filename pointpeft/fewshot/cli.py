"""What ``tools/fewshot.py`` does: parse the command line, run the sweep (or MHR's cross-task protocol), print
and save the table. Kept in the library so the tool stays thin and the tests drive the same code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pointpeft.config import Config, apply_overrides, load_config, set_value
from pointpeft.errors import ConfigError
from pointpeft.fewshot.options import fewshot_options, parse_folds
from pointpeft.utils.cli import run_guarded
from pointpeft.utils.misc import get_logger, setup_logging

log = get_logger("fewshot")

CLI = "<command line>"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="N-way K-shot few-shot evaluation: fine-tune on every fold's support set, test on its query set, "
        "report mean ± std over folds.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="cfgs/fewshot/<method>.yaml")
    p.add_argument("--ckpt", default=None, help="pretrained backbone (Point-MAE/Point-BERT/... .pth); none = random init")
    p.add_argument("--way", type=int, nargs="+", default=None, help="N (several allowed); default: the config's")
    p.add_argument("--shot", type=int, nargs="+", default=None, help="K (several allowed); default: the config's")
    p.add_argument("--folds", default=None, help="fold ids: '0-9', '0,3,5-7'; default: the config's")
    p.add_argument("--jobs", type=int, default=None, help="folds trained in parallel processes (threads = cores/jobs)")
    p.add_argument("--root", default="experiments", help="runs go to <root>/fewshot/<name>/<way>w<shot>s/fold<k>/")
    p.add_argument("--name", default=None, help="row name and run sub-folder (default: the config file's stem)")
    p.add_argument("--folds-root", default=None, help="episode folder (fewshot.root): <dir>/<way>way<shot>shot/<k>.pkl")
    p.add_argument("--generate-from", default=None, metavar="DATASET",
                   help="generate missing episodes from this registered data set (modelnet40, synthetic_shapes, ...)")
    p.add_argument("--source-root", default=None, help="root of the --generate-from data set")
    p.add_argument("--report", choices=["last", "best"], default=None,
                   help="per-fold accuracy: last epoch (default) or best epoch on the query set (the originals)")
    p.add_argument("--protocol", choices=["standard", "mhr"], default="standard",
                   help="mhr: multi-task inventory training on disjoint class subsets, then few-shot adaptation "
                   "of an unseen task with Poly, MHR, MHR-z and MHR-mu")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for train.epochs=N")
    p.add_argument("--overwrite", action="store_true", help="retrain folds that finished before")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optimizer.lr=1e-3 model.type=...")
    return p


def _set(cfg: Config, dotted: str, value: Any) -> None:
    set_value(cfg, dotted, value, CLI)


def resolve_config(args: argparse.Namespace) -> Config:
    """The config with the command line's options applied (they win over the file and the overrides)."""
    cfg = load_config(args.config)
    apply_overrides(cfg, args.overrides)
    if args.epochs is not None:
        _set(cfg, "train.epochs", args.epochs)
    for key in ("way", "shot", "jobs", "report"):
        if getattr(args, key) is not None:
            _set(cfg, f"fewshot.{key}", getattr(args, key))
    if args.folds is not None:
        try:
            _set(cfg, "fewshot.folds", parse_folds(args.folds))
        except ValueError as e:
            raise ConfigError(f"--folds: {e}") from None
    if args.folds_root is not None:
        _set(cfg, "fewshot.root", args.folds_root)
    if args.generate_from is not None:
        node: dict[str, Any] = {"type": args.generate_from}
        if args.source_root is not None:
            node["root"] = args.source_root
        npoints = ((cfg.get("data") or {}).get("train") or {}).get("npoints")
        if npoints:
            node["npoints"] = npoints
        _set(cfg, "fewshot.generate_from", node)
    elif args.source_root is not None:
        raise ConfigError("--source-root needs --generate-from DATASET")
    return cfg


def _run(args: argparse.Namespace, name: str, level: int) -> Any:
    """Resolve the config and run the sweep or the MHR protocol; returns the report."""
    cfg = resolve_config(args)
    opts = fewshot_options(cfg)
    ckpt = str(Path(args.ckpt).resolve()) if args.ckpt else None
    if args.ckpt and not Path(args.ckpt).is_file():
        raise ConfigError(f"--ckpt {args.ckpt}: no such file")
    if args.protocol == "mhr":
        from pointpeft.fewshot.mhr_protocol import run_mhr_protocol

        return run_mhr_protocol(cfg, opts, args.root, ckpt=ckpt, name=name, overwrite=args.overwrite,
                                log_level=level)
    from pointpeft.fewshot.sweep import run_sweep

    return run_sweep(cfg, name, opts, args.root, ckpt=ckpt, overwrite=args.overwrite, log_level=level,
                     extra={"config": str(args.config)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (errors in one line, not a traceback)."""
    args = build_parser().parse_args(argv)
    level = 30 if args.quiet else 20
    setup_logging(level)
    name = args.name or Path(args.config).stem
    report, rc = run_guarded(lambda: _run(args, name, level), log,
                             "interrupted; run the same command again to resume (finished folds are kept)")
    if report is None:
        return rc
    out = Path(args.root) / "fewshot"
    sys.stdout.write(report.table)
    sys.stdout.write(f"\n{len(report.trained)} fold(s) trained, {len(report.skipped)} finished before, "
                     f"{len(report.failed)} failed; summary in {out / name / 'fewshot.json'}, all methods in "
                     f"{out / 'table.md'}\n")
    for run_dir, err in report.failed.items():
        sys.stdout.write(f"FAILED {run_dir}: {err}\n")
    return 1 if report.failed else 0
