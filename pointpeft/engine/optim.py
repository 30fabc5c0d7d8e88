"""Optimizers and learning-rate schedules, chosen by ``type`` in the config's ``optimizer:``/``scheduler:`` sections.

Only trainable parameters reach the optimizer. Weight decay skips parameters by role (:func:`no_decay_reason`):
biases of any shape, normalisation layers, the CLS / positional tokens and anything else a module lists in
``no_weight_decay()``, and 1-D tensors (the rule of Point-MAE's and DAPT's ``add_weight_decay``). A PEFT method may give some parameters
their own options (``PeftMethod.param_group_options``: lr, weight_decay) without the engine knowing it by name.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.config import Config
from pointpeft.errors import ConfigError
from pointpeft.peft import unwrap
from pointpeft.registry import OPTIMIZERS, SCHEDULERS

#: module types whose parameters are normalisation scales and shifts (never decayed)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                                           nn.modules.batchnorm._NormBase)
_BIAS_NAME = re.compile(r"(bias|.+_bias|bias_.+|b|b_.+)")  # bias, up_bias, bias_k, b_down (Adapter-X's stacks)


def _declared_no_decay(model: nn.Module) -> set[str]:
    """Full names listed by ``no_weight_decay()`` of the model or of any submodule (names relative to it)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def no_decay_reason(model: nn.Module) -> dict[str, str]:
    """Why each trainable parameter of ``model`` gets no weight decay, by role; decayed ones are absent.

    Roles: ``norm`` (owned by a normalisation layer), ``bias`` (named as a bias, whatever its shape: the experts'
    ``b_down``/``b_up`` stacks are 2-D), ``listed`` (named by a ``no_weight_decay()`` of the model or a submodule:
    the CLS / positional tokens of Point-MAE (``cls_token``, ``cls_pos``) and timm (``pos_embed``, ``cls_token``...),
    the extension point of both), and ``1-D`` (the originals' ``add_weight_decay`` rule, kept so nothing they
    exclude is decayed here). Prompt tokens are weights, decayed as in VPT's and IDPT's optimisers.
    """
    inner = unwrap(model)
    declared = _declared_no_decay(inner)
    top = getattr(inner, "no_weight_decay", None)
    top_leaves = set(top()) if callable(top) else set()
    reasons: dict[str, str] = {}
    for mod_name, module in inner.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            if not p.requires_grad or name in reasons:
                continue
            if isinstance(module, NORM_TYPES):
                reasons[name] = "norm"
            elif _BIAS_NAME.fullmatch(leaf):
                reasons[name] = "bias"
            elif name in declared or leaf in top_leaves:
                reasons[name] = "listed"
            elif p.ndim <= 1:
                reasons[name] = "1-D"
    return reasons


def _method_options(model: nn.Module) -> dict[str, dict[str, float]]:
    """The PEFT method's per-parameter optimiser options (``PeftMethod.param_group_options``), checked."""
    from pointpeft.peft import get_method

    method = get_method(model)
    options = method.param_group_options(unwrap(model)) if method is not None else {}
    allowed = {"lr", "weight_decay"}
    for name, opts in options.items():
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ConfigError(f"peft method {method.name!r}: param_group_options for {name!r} has unknown key(s) "
                              f"{bad}; allowed: {sorted(allowed)}")
    return options


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters grouped by optimiser options: decayed, not decayed (:func:`no_decay_reason`), and one
    group per option set a PEFT method declares (e.g. MHR's routing logits); the decayed group comes first."""
    skip = no_decay_reason(model)
    options = _method_options(model)
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        opts = {"weight_decay": 0.0 if name in skip else weight_decay, **options.get(name, {})}
        key = tuple(sorted(opts.items()))
        group = groups.setdefault(key, {"params": [], **opts})
        if "lr" in opts:
            group["lr_override"] = True  # schedules take their reference lr from the other groups
        group["params"].append(p)
    if not groups:
        raise ConfigError("the model has no trainable parameter to optimise")
    return sorted(groups.values(), key=lambda g: ("lr" in g and g.get("lr_override", False), g["weight_decay"] == 0))


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
        ref = [g["lr"] for g in optimizer.param_groups if not g.get("lr_override")] or [
            g["lr"] for g in optimizer.param_groups]
        self._base_max = max(ref, default=1.0) or 1.0
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
