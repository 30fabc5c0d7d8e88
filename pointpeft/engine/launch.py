"""What ``tools/train.py`` and ``tools/pretrain.py`` do: parse the command line, pick the run folder, train or
resume. Kept in the library so every entry point (and the tests) share one implementation."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pointpeft.config import Config, load_config
from pointpeft.engine import train_state as ck
from pointpeft.engine.distributed import DistInfo, broadcast_object, cleanup, init_distributed
from pointpeft.engine.run_dir import default_run_dir, prepare_run_dir
from pointpeft.errors import ConfigError, PointPeftError
from pointpeft.utils.misc import LOGGER_NAME, get_logger, setup_logging

log = get_logger("train")


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config (cfgs/...); not needed with --resume RUN_DIR")
    p.add_argument("--ckpt", default=None, help="pretrained backbone weights (official Point-MAE/Point-BERT/DAPT/"
                   "IDPT .pth, timm .npz/.pth/.safetensors)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run: its folder, or alone to resume the folder that --config and "
                   "--exp-name name")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--seeds", nargs="+", default=None,
                   help="one run per seed (<exp-name>_seed<k>), then a mean ± std table of them")
    p.add_argument("--exp-name", default=None, help="run folder name under experiments/<config>/<group>/")
    p.add_argument("--amp", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="mixed precision (default: the config's train.amp, itself 'auto')")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for train.epochs=N")
    p.add_argument("--root", default="experiments", help="where run folders go")
    p.add_argument("--run-dir", default=None, help="exact run folder (instead of <root>/<config>/<group>/<exp>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. peft.num_experts=8 optimizer.lr=1e-3")
    return p


def _resolve(args: argparse.Namespace) -> tuple[Config, Path, str | None, dict[str, Any] | None]:
    """(config, run folder, pretrained path, training state to resume or None)."""
    if args.resume not in (None, True):
        run_dir = Path(args.resume)
        if run_dir.is_file():
            run_dir = run_dir.parent
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (is it a run folder?)")
        cfg = load_config(cfg_path, args.overrides)
        results = run_dir / "results.json"
        ckpt = args.ckpt
        if ckpt is None and results.is_file():
            ckpt = json.loads(results.read_text()).get("pretrained")
        return cfg, run_dir, ckpt, _resume_state(run_dir)
    if not args.config:
        raise ConfigError("--config is required (or --resume RUN_DIR)")
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.amp is not None:
        overrides.append(f"train.amp={args.amp}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    cfg = load_config(args.config, overrides)
    exp = args.exp_name or cfg.get("exp_name") or "default"
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.config, exp, args.root)
    if args.resume is True:
        return cfg, run_dir, args.ckpt, _resume_state(run_dir)
    return cfg, run_dir, args.ckpt, None


def _resume_state(run_dir: Path) -> dict[str, Any]:
    """The last complete training state; temp files of a write that was killed are removed (they are never read)."""
    state = ck.read_train_state(run_dir / ck.LAST_NAME)
    for stale in run_dir.glob(".*.tmp"):
        log.warning("removing %s, left by a write that was interrupted", stale)
        stale.unlink(missing_ok=True)
    return state


def run(argv: Sequence[str] | None = None, description: str = "Fine-tune a pretrained transformer.") -> int:
    """Entry point; returns the process exit code (errors are reported in one line, not a traceback)."""
    args = build_parser(description).parse_intermixed_args(argv)
    setup_logging(30 if args.quiet else 20)
    if not args.seeds:
        return _run_one(args)
    # --seeds is greedy: numbers are seeds, anything after them is a config override
    args.overrides = [a for a in args.seeds if not a.lstrip("-").isdigit()] + list(args.overrides)
    args.seeds = [int(a) for a in args.seeds if a.lstrip("-").isdigit()]
    if args.resume is not None or args.seed is not None:
        log.error("--seeds cannot be combined with --seed or --resume (resume each seed's folder)")
        return 2
    run_dirs = []
    for seed in args.seeds:
        one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None,
                                    "exp_name": f"{args.exp_name or 'default'}_seed{seed}"})
        if args.run_dir:
            one.run_dir = str(Path(args.run_dir) / f"seed{seed}")
        rc = _run_one(one)
        if rc != 0:
            return rc
        run_dirs.append(one.run_dir or default_run_dir(args.config, one.exp_name, args.root))
    from pointpeft.engine.summary import collect, markdown_table

    log.info("mean ± std over seeds %s:\n%s", args.seeds, markdown_table(collect(run_dirs)))
    return 0


def _run_one(args: argparse.Namespace) -> int:
    info: DistInfo | None = None
    trainer = None
    handlers = set(logging.getLogger(LOGGER_NAME).handlers)
    try:
        from pointpeft.engine.trainer import Trainer

        cfg, run_dir, ckpt, state = _resolve(args)
        train_node = cfg.get("train") or {}
        info, device = init_distributed(str(train_node.get("device", "auto")))
        if info.is_main and state is None:
            run_dir = prepare_run_dir(run_dir, explicit_name=bool(args.exp_name or args.run_dir),
                                      overwrite=args.overwrite)
        run_dir = Path(broadcast_object(str(run_dir), info))
        if info.is_main:
            setup_logging(30 if args.quiet else 20, log_file=run_dir / "train.log")
            log.info("run folder: %s", run_dir)
        trainer = Trainer(cfg, run_dir, ckpt=ckpt, dist_info=info, device=device)
        if state is not None:
            trainer.restore(state, str(run_dir / ck.LAST_NAME))
        trainer.write_config()
        results = trainer.fit()
        if info.is_main:
            best = results.get("best", {})
            log.info("done: best %s %s at epoch %s; results in %s", trainer.task.main_metric,
                     best.get(trainer.task.main_metric), best.get("epoch"), run_dir / "results.json")
        return 0
    except PointPeftError as e:
        log.error("%s: %s", type(e).__name__, e)
        _mark(trainer, info, f"failed: {type(e).__name__}: {e}")
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; resume with --resume (the last complete epoch is kept)")
        _mark(trainer, info, "interrupted")
        return 130
    finally:
        if info is not None:
            cleanup(info)
        _close_run_log(handlers)


def _close_run_log(before: set[logging.Handler]) -> None:
    """Detach this run's train.log: with ``--seeds`` the next run's lines go to the next run's folder only."""
    logger = logging.getLogger(LOGGER_NAME)
    for h in set(logger.handlers) - before:
        logger.removeHandler(h)
        h.close()


def _mark(trainer: Any, info: DistInfo | None, status: str) -> None:
    """results.json says how a run ended when it did not finish (a sweep then knows it is not running)."""
    if trainer is not None and info is not None and info.is_main:
        try:
            trainer.write_results(status)
        except OSError as e:  # the run is already failing; do not hide its error behind this one
            log.warning("could not update results.json: %s", e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
