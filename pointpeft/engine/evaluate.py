"""What ``tools/test.py`` does: rebuild a run's model (base weights + trained adapter), test it, optionally with a
fixed-vote test-time augmentation reported beside the plain accuracy (never a best-of over vote rounds)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pointpeft.config import Config, load_config
from pointpeft.data import VoteAugmentation, build_dataset
from pointpeft.engine import train_state as ck
from pointpeft.engine.amp import resolve_amp
from pointpeft.engine.classification import accuracy_metrics, build_classifier, predict
from pointpeft.engine.distributed import DistInfo
from pointpeft.engine.options import DataOptions
from pointpeft.engine.trainer import make_loader
from pointpeft.errors import ConfigError, PointPeftError
from pointpeft.peft import load_adapter, unwrap
from pointpeft.utils.io import atomic_write_json
from pointpeft.utils.misc import get_logger, set_seed, setup_logging

log = get_logger("test")


def load_run_model(run_dir: str | Path, which: str = "best", ckpt: str | None = None) -> tuple[Any, Config]:
    """(model with the run's trained weights, the run's config). ``which``: ``best`` (the best/ adapter) or
    ``last`` (ckpt-last.pth); the base weights come from ``ckpt`` or the run's recorded pretrained path."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml (not a run folder written by tools/train.py)")
    cfg = load_config(cfg_path)
    if ckpt is None and (run_dir / "results.json").is_file():
        ckpt = json.loads((run_dir / "results.json").read_text()).get("pretrained")
    set_seed(int(cfg.get("seed", 0)))  # a backbone trained without --ckpt was initialised from this seed
    model = build_classifier(cfg, ckpt)
    if which == "best":
        if not (run_dir / ck.BEST_DIR).is_dir():
            raise ConfigError(f"{run_dir / ck.BEST_DIR}: no best weights yet (written at the first evaluation)")
        load_adapter(model, run_dir / ck.BEST_DIR)
    elif which == "last":
        state = ck.read_train_state(run_dir / ck.LAST_NAME)
        ck.load_trainable_state(model, state["model"], str(run_dir / ck.LAST_NAME))
    else:
        raise ConfigError(f"--which must be best or last, got {which!r}")
    return model, cfg


def test_model(model: Any, cfg: Config, votes: int = 0, split: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Plain accuracy / mean-class accuracy / confusion matrix, plus the same with ``votes`` views when > 0."""
    data = DataOptions(**{k: v for k, v in (cfg.get("data") or {}).items()})
    split = split or ("test" if data.test is not None else "val")
    node = getattr(data, split)
    if node is None:
        raise ConfigError(f"{cfg.source_of('data')}: no data.{split} to test on")
    node = {k: v for k, v in dict(node).items() if k != "transforms"}  # the test set is never augmented
    dataset = build_dataset(node)
    loader = make_loader(dataset, data.val_batch_size or data.batch_size, shuffle=False, seed=seed,
                         info=DistInfo())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    amp = resolve_amp(str((cfg.get("train") or {}).get("amp", "auto")), device)
    n = getattr(unwrap(model), "num_classes", None) or dataset.num_classes
    pred, target, _ = predict(model, loader, autocast=amp.autocast)
    metrics, cm = accuracy_metrics(pred, target, n)
    out: dict[str, Any] = {"split": split, "num_samples": int(len(target)), **metrics, "amp": amp.mode,
                           "confusion_matrix": cm.tolist(), "classes": list(getattr(dataset, "classes", []))}
    if votes > 0:
        set_seed(seed)
        va = VoteAugmentation(num_votes=votes, include_identity=False)
        vpred, vtarget, _ = predict(model, loader, votes=va, seed=seed, autocast=amp.autocast)
        vmetrics, _ = accuracy_metrics(vpred, vtarget, n)
        out["votes"] = {"num_votes": votes, "seed": seed, **vmetrics}
    return out


def run(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Test a trained run (or a config + base + adapter).")
    ap.add_argument("run", nargs="?", help="run folder written by tools/train.py")
    ap.add_argument("--which", default="best", choices=["best", "last"])
    ap.add_argument("--config", help="config to build the model from (instead of a run folder)")
    ap.add_argument("--ckpt", help="base backbone weights (default: the run's recorded pretrained file)")
    ap.add_argument("--adapter", help="adapter folder (adapter.safetensors + adapter_config.json) with --config")
    ap.add_argument("--votes", type=int, default=0, help="also report a K-view vote (scale & translate views)")
    ap.add_argument("--split", choices=["val", "test"], default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON file for the results (default: <run>/test-<which>.json)")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        if args.run:
            model, cfg = load_run_model(args.run, args.which, args.ckpt)
        elif args.config:
            cfg = load_config(args.config)
            model = build_classifier(cfg, args.ckpt)
            if args.adapter:
                load_adapter(model, args.adapter)
        else:
            raise ConfigError("give a run folder or --config (with --ckpt/--adapter)")
        res = test_model(model, cfg, votes=args.votes, split=args.split, seed=args.seed)
    except PointPeftError as e:
        log.error("%s: %s", type(e).__name__, e)
        return 2
    line = f"{res['split']}: acc {res['acc']:.2f}%  mean-class acc {res['mean_class_acc']:.2f}%  (n={res['num_samples']})"
    if "votes" in res:
        v = res["votes"]
        line += f" | {v['num_votes']}-vote: acc {v['acc']:.2f}%  mean-class acc {v['mean_class_acc']:.2f}%"
    log.info(line)
    out = args.out or (Path(args.run) / f"test-{args.which}.json" if args.run else None)
    if out:
        atomic_write_json(out, res)
        log.info("wrote %s", out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
