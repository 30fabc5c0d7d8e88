"""Trainer hooks: what happens around the loop without being the loop (progress, TensorBoard).

A hook overrides any of ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch`` and ``after_train``;
each receives the trainer. Hooks run on rank 0 only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from pointpeft.peft import get_method
from pointpeft.utils.misc import get_logger

log = get_logger("engine")


class Hook:
    def before_train(self, trainer: Any) -> None: ...

    def before_epoch(self, trainer: Any) -> None: ...

    def after_step(self, trainer: Any, logs: dict[str, float]) -> None: ...

    def after_epoch(self, trainer: Any, row: dict[str, Any]) -> None: ...

    def after_train(self, trainer: Any) -> None: ...


def progress_enabled(mode: str) -> bool:
    if mode == "on":
        return True
    if mode == "off":
        return False
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


class ProgressHook(Hook):
    """A tqdm bar per epoch (on a terminal) and one summary line per epoch (always)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def before_epoch(self, trainer: Any) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
                            leave=False, dynamic_ncols=True)

    def after_step(self, trainer: Any, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", lr=f"{trainer.lr:.2e}")

    def after_epoch(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [f"epoch {row['epoch']}/{trainer.epochs}", f"lr {row['lr']:.2e}"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("train_") and isinstance(v, float)]
        parts += [f"{k} {v:.2f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)]
        parts.append(f"{row['time_s']:.1f}s")
        best = trainer.best
        if best.get("epoch") is not None:
            parts.append(f"best {trainer.task.main_metric} {best['value']:.4g} @ {best['epoch']}")
        log.info(" | ".join(parts))


class TensorBoardHook(Hook):
    """Scalars under ``<run>/tb``: step losses and lr, epoch metrics, and the PEFT method's evaluation scalars."""

    def __init__(self, logdir: str | os.PathLike, every: int) -> None:
        self.logdir = str(logdir)
        self.every = every
        self.writer = None

    def before_train(self, trainer: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; a broken install should not stop training
            log.warning("TensorBoard unavailable (%s); no event files", e)
            return
        self.writer = SummaryWriter(self.logdir, purge_step=trainer.global_step or None)

    def after_step(self, trainer: Any, logs: dict[str, float]) -> None:
        if self.writer is not None and trainer.global_step % self.every == 0:
            for k, v in logs.items():
                self.writer.add_scalar(f"step/{k}", v, trainer.global_step)
            self.writer.add_scalar("step/lr", trainer.lr, trainer.global_step)

    def after_epoch(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        method = get_method(trainer.model)
        if method is not None:  # what the PEFT method draws from its evaluation records (Adapter-X: expert usage)
            for tag, value in method.record_scalars(trainer.task_extras).items():
                self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def after_train(self, trainer: Any) -> None:
        if self.writer is not None:
            self.writer.close()
