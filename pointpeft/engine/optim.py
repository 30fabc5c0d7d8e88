"""Optimizers and learning-rate schedules, chosen by ``type`` in the config's ``optimizer:``/``scheduler:`` sections.

Only trainable parameters reach the optimizer. Weight decay skips biases, norm weights, tokens and anything the
model lists in ``no_weight_decay()`` (the rule of Point-MAE, DAPT and timm).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.config import Config
from pointpeft.errors import ConfigError
from pointpeft.peft import unwrap
from pointpeft.registry import OPTIMIZERS, SCHEDULERS


def _no_decay_names(model: nn.Module) -> set[str]:
    inner = unwrap(model)
    fn = getattr(inner, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups of trainable parameters: with weight decay (matrices) and without (1-D, tokens, listed)."""
    skip = _no_decay_names(model)
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ConfigError("the model has no trainable parameter to optimise")
    return groups


@OPTIMIZERS.register("adamw")
def adamw(params: list[dict[str, Any]], lr: float = 5e-4, weight_decay: float = 0.05,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("adam")
def adam(params: list[dict[str, Any]], lr: float = 1e-3, weight_decay: float = 0.0,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("sgd")
def sgd(params: list[dict[str, Any]], lr: float = 0.01, weight_decay: float = 0.0, momentum: float = 0.9,
        nesterov: bool = False) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def build_optimizer(node: Mapping[str, Any] | None, model: nn.Module, cfg: Config | None = None) -> torch.optim.Optimizer:
    """The ``optimizer:`` section (``type`` + the optimizer's keys) over the model's trainable parameters."""
    node = dict(node or {"type": "adamw"})
    node.setdefault("type", "adamw")
    wd = float(node.get("weight_decay", 0.05 if str(node["type"]).lower() == "adamw" else 0.0))
    try:
        return OPTIMIZERS.build(node, params=param_groups(model, wd))
    except ConfigError as e:
        where = cfg.source_of("optimizer") if cfg is not None else "<config>"
        raise ConfigError(f"{where}: optimizer: {e}") from None


class StepScheduler(abc.ABC):
    """A learning-rate schedule stepped once per optimizer step; ``lr_at(step)`` is the factor on the base lr.

    Stepping per iteration (not per epoch) keeps warm-up smooth on small data sets and makes resume exact: the state
    is the step counter alone.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer
        self.total_steps = max(int(total_steps), 1)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    @abc.abstractmethod
    def factor(self, step: int) -> float:
        """Multiplier on the base learning rate at optimizer step ``step`` (0-based)."""

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs), "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


class WarmupCosine(StepScheduler):
    """Linear warm-up from ``warmup_lr`` to the base lr, then cosine decay to ``min_lr`` (DAPT/Point-MAE recipe,
    timm's CosineLRScheduler shape, per step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 1e-6, warmup_lr: float = 1e-6) -> None:
        self.warmup_steps = max(int(warmup_steps), 0)
        self.min_lr = float(min_lr)
        self.warmup_lr = float(warmup_lr)
        self._base_max = max((g["lr"] for g in optimizer.param_groups), default=1.0) or 1.0
        super().__init__(optimizer, total_steps)

    def factor(self, step: int) -> float:
        lo_warm, lo_min = self.warmup_lr / self._base_max, self.min_lr / self._base_max
        if step < self.warmup_steps:
            return lo_warm + (1.0 - lo_warm) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min((step - self.warmup_steps) / span, 1.0)
        return lo_min + (1.0 - lo_min) * 0.5 * (1.0 + math.cos(math.pi * t))


class Constant(StepScheduler):
    """The base learning rate throughout (after an optional linear warm-up)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> None:
        self.warmup_steps = max(int(warmup_steps), 0)
        super().__init__(optimizer, total_steps)

    def factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0


class MultiStep(StepScheduler):
    """Multiply the lr by ``gamma`` at each epoch in ``milestones``."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                 milestones: list[int], gamma: float = 0.1) -> None:
        self.boundaries = sorted(int(m) * steps_per_epoch for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, total_steps)

    def factor(self, step: int) -> float:
        return self.gamma ** sum(step >= b for b in self.boundaries)


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 10,
           min_lr: float = 1e-6, warmup_lr: float = 1e-6) -> StepScheduler:
    return WarmupCosine(optimizer, epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch), min_lr,
                        warmup_lr)


@SCHEDULERS.register("constant")
def constant(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
             warmup_epochs: float = 0) -> StepScheduler:
    return Constant(optimizer, epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch))


@SCHEDULERS.register("step")
def multistep(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, milestones: list[int] = (),
              gamma: float = 0.1) -> StepScheduler:
    return MultiStep(optimizer, epochs * steps_per_epoch, steps_per_epoch, list(milestones), gamma)


def build_scheduler(node: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, epochs: int,
                    steps_per_epoch: int, cfg: Config | None = None) -> StepScheduler:
    """The ``scheduler:`` section; ``epochs`` and ``steps_per_epoch`` come from the trainer."""
    node = dict(node or {"type": "cosine"})
    node.setdefault("type", "cosine")
    try:
        return SCHEDULERS.build(node, optimizer=optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)
    except ConfigError as e:
        where = cfg.source_of("scheduler") if cfg is not None else "<config>"
        raise ConfigError(f"{where}: scheduler: {e}") from None
