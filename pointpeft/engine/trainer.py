"""The training loop shared by every task (classification, MAE pretraining) and every method.

One ``Trainer`` owns: the task (loss and metrics), the model (backbone + PEFT method), data loaders, optimizer,
per-step schedule, AMP policy, DDP wrapper, hooks, and the run folder with its checkpoints and ``results.json``.
A run killed at any point resumes from its last complete epoch and continues the same curve bit for bit (CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from pointpeft.config import Config, build_dataclass
from pointpeft.data import build_dataset
from pointpeft.engine import train_state as ck
from pointpeft.engine.amp import make_grad_scaler, resolve_amp
from pointpeft.engine.distributed import DistInfo, barrier, global_means, init_distributed
from pointpeft.engine.optim import build_optimizer, build_scheduler
from pointpeft.engine.options import DataOptions, TrainOptions
from pointpeft.engine.rng import capture_rng, restore_rng
from pointpeft.engine.run_dir import dump_config, git_commit, library_versions, plain_config
from pointpeft.engine.trainer_hooks import Hook, ProgressHook, TensorBoardHook, progress_enabled
from pointpeft.errors import ConfigError, PointPeftError
from pointpeft.peft import is_peft_model, save_adapter, trainable_parameter_report
from pointpeft.registry import TASKS
from pointpeft.utils.io import atomic_write_json, atomic_write_text
from pointpeft.utils.machine import machine_info
from pointpeft.utils.misc import get_logger, set_seed

log = get_logger("engine")


class TrainingDiverged(PointPeftError):
    """The loss became NaN/inf; the last checkpoint on disk is untouched."""


def build_task(cfg: Config) -> Any:
    opts = build_dataclass(TrainOptions, cfg.get("train"), "train", cfg)
    try:
        return TASKS.get(opts.task)(cfg)
    except ConfigError as e:
        raise ConfigError(f"{cfg.source_of('train.task')}: train.task: {e}") from None


def make_loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int, info: DistInfo, num_workers: int = 0,
                drop_last: bool | str = False) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): the same permutation DistributedSampler draws, split
    across ranks, so N processes see exactly the batches one process would (global batch = N x batch_size)."""
    world = info.world_size if shuffle else 1
    rank = info.rank if shuffle else 0
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=shuffle and world > 1)
    if drop_last == "auto":
        drop_last = len(sampler) % batch_size == 1 and len(sampler) > 1
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=bool(drop_last), generator=gen, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


class Trainer:
    """Build everything a run needs from a resolved config; ``fit()`` trains, ``restore()`` resumes."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, ckpt: str | None = None,
                 hooks: Iterable[Hook] = (), dist_info: DistInfo | None = None,
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.opts = build_dataclass(TrainOptions, cfg.get("train"), "train", cfg)
        self.data_opts = build_dataclass(DataOptions, cfg.get("data"), "data", cfg)
        if dist_info is None or device is None:
            dist_info, device = init_distributed(self.opts.device)
        self.dist, self.device = dist_info, device
        self.seed = int(cfg.get("seed", 0))
        self.ckpt = str(ckpt) if ckpt else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.opts.threads:
            torch.set_num_threads(int(self.opts.threads))
        set_seed(self.seed)
        if self.opts.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.amp = resolve_amp(self.opts.amp, device)
        if self.dist.is_main:
            log.info("amp: %s (%s)", self.amp.mode, self.amp.reason)
        self.task = build_task(cfg)
        self.task.autocast = self.amp.autocast
        self.model = self.task.build_model(cfg, ckpt=self.ckpt).to(device)

        self.train_set = self._dataset("train", required=True)
        self.val_set = self._dataset("val", required=False)
        self.train_loader = make_loader(self.train_set, self.data_opts.batch_size, shuffle=True, seed=self.seed,
                                        info=self.dist, num_workers=self.data_opts.num_workers,
                                        drop_last=self.data_opts.drop_last)
        if len(self.train_loader) == 0:
            raise ConfigError(f"{cfg.source_of('data.batch_size')}: data.batch_size {self.data_opts.batch_size} "
                              f"leaves no training batch for {len(self.train_set)} samples")
        self.val_loader = None
        if self.val_set is not None:
            self.val_loader = make_loader(self.val_set, self.data_opts.val_batch_size or self.data_opts.batch_size,
                                          shuffle=False, seed=self.seed, info=self.dist,
                                          num_workers=self.data_opts.num_workers)

        self.wrapped: nn.Module = self.model
        if self.dist.enabled:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizer = build_optimizer(cfg.get("optimizer"), self.model, cfg)
        self.epochs = int(self.opts.epochs)
        self.steps_per_epoch = min(len(self.train_loader), self.opts.max_steps_per_epoch or len(self.train_loader))
        self.scheduler = build_scheduler(cfg.get("scheduler"), self.optimizer, self.epochs, self.steps_per_epoch,
                                         cfg)
        self.scaler = make_grad_scaler(self.amp)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.saved_epoch: int | None = None  # epoch of the ckpt-last.pth this trainer wrote or resumed from
        self.best: dict[str, Any] = {"value": None, "epoch": None, "metrics": {}}
        self.history: list[dict[str, Any]] = []
        self.task_extras: dict[str, Any] = {}
        self.started = time.time()
        self.elapsed_before = 0.0
        #: the code the run trains with: the commit when it started, then the commit of every resume that differs
        self.git_commits: list[str | None] = [git_commit()]
        self.hooks: list[Hook] = []
        if self.dist.is_main:
            self.hooks.append(ProgressHook(progress_enabled(self.opts.progress)))
            if self.run_dir is not None:
                self.hooks.append(TensorBoardHook(self.run_dir / "tb", self.opts.log_every))
            self.hooks.extend(hooks)
        self.params = trainable_parameter_report(self.model)
        if self.dist.is_main:
            log.info("trainable params: %s || all params: %s || trainable%%: %.4f",
                     f"{self.params['trainable']:,}", f"{self.params['total']:,}", self.params["percent"])

    # -- set-up helpers ------------------------------------------------------------------------------------------
    def _dataset(self, split: str, required: bool) -> Any:
        node = getattr(self.data_opts, split)
        if node is None:
            if required:
                raise ConfigError(f"{self.cfg.source_of('data')}: the config needs data.{split} (a data set node "
                                  "with type: modelnet40 | scanobjectnn | synthetic_shapes | ...)")
            return None
        ds = build_dataset(node, self.cfg, f"data.{split}")
        if len(ds) == 0:
            raise ConfigError(f"{self.cfg.source_of(f'data.{split}')}: data.{split} is empty")
        check = getattr(self.task, "check_data", None)
        if check is not None:
            check(self.model, ds, split)
        return ds

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- resume ---------------------------------------------------------------------------------------------------
    def state_parts(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": capture_rng(),
                "best": self.best, "history": self.history, "elapsed_s": self.elapsed(),
                "task": str(self.opts.task), "git_commits": self.git_commits}

    def restore(self, state: dict[str, Any], source: str = "<state>") -> None:
        """Continue from a :func:`~pointpeft.engine.train_state.read_train_state` dict."""
        ck.load_trainable_state(self.model, state["model"], source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{source}: optimizer state does not fit this run's parameters ({e})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.saved_epoch = self.epoch
        self.global_step = int(state.get("global_step", self.epoch * self.steps_per_epoch))
        self.best = dict(state.get("best") or self.best)
        self.history = list(state.get("history") or [])[: self.epoch]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        earlier = [c for c in state.get("git_commits") or [] if c]
        self.git_commits = list(dict.fromkeys([*earlier, *self.git_commits]))
        restore_rng(state["rng"])
        if self.dist.is_main:
            log.info("resumed from %s after epoch %d (step %d)", source, self.epoch, self.global_step)

    def checkpoint_on_disk(self) -> str:
        """What a resume could start from, as a phrase for error messages (what is really there, not a guess)."""
        if self.run_dir is None:
            return "this run has no run folder, so no checkpoint exists"
        path = self.run_dir / ck.LAST_NAME
        if not path.is_file():
            return f"no checkpoint exists yet ({path} is written after the first saved epoch)"
        if self.saved_epoch is None:
            return f"{path} predates this run and was not touched"
        return f"{path} of epoch {self.saved_epoch} is intact"

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    # -- the loop -------------------------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> None:
        for h in self.hooks:
            getattr(h, name)(self, *args)

    def train_epoch(self) -> dict[str, float]:
        self.train_loader.sampler.set_epoch(self.epoch)
        self.train_loader.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        self.wrapped.train()
        sums: dict[str, float] = {}
        n = 0
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            with self.amp.autocast():
                loss, logs = self.task.training_step(self.wrapped, batch)
            if not math.isfinite(float(loss.detach())):
                raise TrainingDiverged(
                    f"loss is {float(loss.detach()):.4g} at epoch {self.epoch + 1}, step {step + 1} ({logs}); nothing was "
                    f"saved from this epoch; {self.checkpoint_on_disk()}. Lower optimizer.lr, set train.grad_clip, "
                    "or try --amp fp32")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.opts.grad_clip:
                self.scaler.unscale_(self.optimizer)
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.opts.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            b = len(batch[1]) if isinstance(batch, (tuple, list)) else 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n += b
            self._call("after_step", logs)
        return global_means(sums, n, self.dist, self.device)

    def evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        return self.task.evaluate(self.model, self.val_loader)

    def _improved(self, value: float) -> bool:
        if self.best["value"] is None:
            return True
        return value > self.best["value"] if self.task.higher_is_better else value < self.best["value"]

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``train.epochs`` (or stop after ``until_epoch`` epochs, e.g. in tests); returns the results."""
        self._call("before_train")
        stop = min(self.epochs, until_epoch) if until_epoch is not None else self.epochs
        while self.epoch < stop:
            self.task.epoch = self.epoch + 1
            self._call("before_epoch")
            t0 = time.time()
            train_logs = self.train_epoch()
            row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.lr}
            row.update({f"train_{k}": v for k, v in train_logs.items()})
            last = self.epoch + 1 == self.epochs
            if self.dist.is_main and (last or (self.epoch + 1) % self.opts.eval_every == 0):
                metrics = self.evaluate()
                self.task_extras = dict(getattr(self.task, "extras", {}) or {})
                row.update({f"val_{k}": v for k, v in metrics.items()})
                main = metrics.get(self.task.main_metric)
                if main is not None and self._improved(main):
                    self.best = {"value": main, "epoch": self.epoch + 1, "metrics": metrics}
                    self._save_best(metrics)
            row["time_s"] = time.time() - t0
            self.epoch += 1
            self.history.append(row)
            if self.dist.is_main:
                if self.run_dir is not None and (last or self.epoch % self.opts.save_every == 0
                                                 or self.epoch == stop):
                    ck.save_train_state(self.run_dir / ck.LAST_NAME, self.model, **self.state_parts())
                    self.saved_epoch = self.epoch
                self._call("after_epoch", row)
                self.write_results("running" if not last else "finished")
            barrier(self.dist)
        if self.epoch >= self.epochs and self.dist.is_main:
            export = getattr(self.task, "export", None)
            if export is not None and self.run_dir is not None:
                export(self.model, self.run_dir, self.epoch)
            self.write_results("finished")
        self._call("after_train")
        return self.results()

    def _save_best(self, metrics: dict[str, float]) -> None:
        if self.run_dir is None or not is_peft_model(self.model):
            return
        save_adapter(self.model, self.run_dir / ck.BEST_DIR,
                     extra={"epoch": self.epoch + 1, "metrics": metrics, "pretrained": self.ckpt})

    # -- results --------------------------------------------------------------------------------------------------
    def results(self, status: str = "running") -> dict[str, Any]:
        from pointpeft.peft import get_method

        method = get_method(self.model)
        out = {
            "status": status,
            "task": self.opts.task,
            "method": method.name if method is not None else None,
            "config": plain_config(self.cfg),
            "seed": self.seed,
            "pretrained": self.ckpt,
            "git_commit": self.git_commits[0],  # the commit the run started on (not the one it ended on)
            "git_commits": self.git_commits,
            "versions": library_versions(),
            "machine": machine_info(),
            "amp": {"mode": self.amp.mode, "reason": self.amp.reason},
            "world_size": self.dist.world_size,
            "params": self.params,
            "data_sizes": {"train": len(self.train_set), "val": len(self.val_set) if self.val_set is not None else 0},
            "epochs_done": self.epoch,
            "elapsed_s": round(self.elapsed(), 2),
            "best": {"epoch": self.best["epoch"], **self.best.get("metrics", {})},
            "last": self.history[-1] if self.history else {},
            "history": self.history,
        }
        out.update({k: v for k, v in self.task_extras.items()})
        return out

    def write_results(self, status: str) -> None:
        if self.run_dir is None:
            return
        atomic_write_json(self.run_dir / "results.json", self.results(status))

    def write_config(self) -> None:
        if self.run_dir is not None and self.dist.is_main:
            atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))

