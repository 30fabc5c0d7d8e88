"""MHR / Poly: routed LoRA inventories on the blocks' target linears, and the API a few-shot tool drives.

API (each takes the PEFT model; the model's ``peft_config`` is kept in step, so save/load reproduce the state):

* :func:`set_task` / :func:`get_task` - the task whose routing row the next forwards use (default 0);
* :func:`add_task` - grow every routing matrix by one task row (returns its id);
* :func:`to_mode` - switch between ``poly``/``mhr`` (everything trains), ``mhr_z`` (only routing trains) and
  ``mhr_mu`` (the averaged inventory as one adapter); :func:`average_inventory` is ``to_mode(model, "mhr_mu")``.

Rebuild the optimizer after :func:`add_task` or :func:`to_mode`: they replace parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.attach import attach_adapter, detach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.inject import get_method
from pointpeft.peft.lora.method import target_linears
from pointpeft.peft.mhr.config import MODES, MhrConfig
from pointpeft.peft.mhr.layers import RoutedLora, check_heads
from pointpeft.utils.modules import unwrap


class Mhr(PeftMethod):
    """Multi-head adapter routing (and Poly, MHR-z, MHR-mu by ``mode``)."""

    name = "mhr"
    config_class = MhrConfig
    mergeable = True  # the current task's mixed adapter folds into the weights like LoRA
    zero_init_output = True  # every inventory B starts at zero

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        for linear in target_linears(spec, cfg.target_modules):
            if cfg.mode in ("mhr", "mhr_z"):
                try:
                    check_heads(cfg.head_split, cfg.heads, cfg.r, linear.in_features, linear.out_features)
                except ValueError as e:
                    raise ConfigError(f"peft method 'mhr': {e}") from None
            layer = RoutedLora(linear.in_features, linear.out_features, cfg.r, cfg.inventory_size, cfg.routing_heads,
                               cfg.num_tasks, cfg.scaling, cfg.dropout, routed=cfg.mode != "mhr_mu",
                               trainable_inventory=cfg.mode != "mhr_z", routing_init=cfg.routing_init,
                               head_split=cfg.head_split, init=cfg.init, relaxed_bernoulli=cfg.relaxed_bernoulli)
            attach_adapter(linear, layer.to(linear.weight.device, linear.weight.dtype), "parallel")

    def param_group_options(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """The routing logits' own lr and weight decay (mttl's ``module_logits`` param group)."""
        opts: dict[str, float] = {"weight_decay": float(self.config.routing_weight_decay)}
        if self.config.routing_lr is not None:
            opts["lr"] = float(self.config.routing_lr)
        return {name: dict(opts) for name, p in model.named_parameters()
                if p.requires_grad and name.endswith("peft_adapter.routing")}

    def merge(self, model: nn.Module, spec: Any) -> None:
        """``W += scaling * B_t @ A_t`` for the current task ``t``; the inventories and routing are removed."""
        linears = [m for block in spec.blocks for m in block.modules()
                   if isinstance(m, nn.Linear) and isinstance(getattr(m, "peft_adapter", None), RoutedLora)]
        if not linears:
            raise ConfigError("mhr: nothing to merge (the model was merged already)")
        with torch.no_grad():
            for linear in linears:
                layer = detach_adapter(linear)
                linear.weight.add_(layer.delta_weight().to(linear.weight.dtype))


# -- API for multi-task training and few-shot adaptation -----------------------------------------------------------
def mhr_layers(model: nn.Module) -> list[RoutedLora]:
    """Every routed LoRA layer of an MHR model; ValueError when there is none."""
    found = [m for m in unwrap(model).modules() if isinstance(m, RoutedLora)]
    if not found:
        raise ValueError(f"{type(unwrap(model)).__name__} has no MHR layers (apply peft type mhr first)")
    return found


def _update_config(model: nn.Module, **changes: Any) -> MhrConfig:
    inner = unwrap(model)
    cfg = dataclasses.replace(inner.peft_config, **changes)
    inner.peft_config = cfg
    method = get_method(inner)
    if method is not None:
        method.config = cfg
    return cfg


def get_task(model: nn.Module) -> int:
    return mhr_layers(model)[0].task_id


def set_task(model: nn.Module, task_id: int) -> None:
    """Route the next forwards with task ``task_id``'s row of every routing matrix."""
    layers = mhr_layers(model)
    n = layers[0].num_tasks
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 <= task_id < n:
        raise ValueError(f"task_id must be an integer in [0, {n}), got {task_id!r} (add_task adds tasks)")
    for layer in layers:
        layer.task_id = task_id


def add_task(model: nn.Module, init: str | int = "uniform", select: bool = True) -> int:
    """Add a task row to every routing matrix (``uniform`` even mix, ``mean`` of the rows, or a task id to copy);
    returns the new task id, made current when ``select``."""
    inner = unwrap(model)
    if inner.peft_config.mode == "mhr_mu":
        raise ConfigError("mhr: mode mhr_mu has no routing to add a task to")
    ids = {layer.add_task(init, inner.peft_config.routing_init) for layer in mhr_layers(inner)}
    (task_id,) = ids
    _update_config(inner, num_tasks=task_id + 1)
    if select:
        set_task(inner, task_id)
    return task_id


def to_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch the training mode in place: ``mhr_z`` freezes the inventory (kept as saved buffers) and trains the
    routing; ``poly``/``mhr`` train both; ``mhr_mu`` averages the inventory into one trainable adapter and drops the
    routing (one way). A single-head (poly) routing is expanded exactly to ``heads`` heads for ``mhr``/``mhr_z``.
    """
    if mode not in MODES:
        raise ConfigError(f"mhr mode must be one of {list(MODES)}, got {mode!r}")
    inner = unwrap(model)
    cfg = inner.peft_config
    layers = mhr_layers(inner)
    if mode == cfg.mode:
        return model
    if cfg.mode == "mhr_mu":
        raise ConfigError(f"mhr: cannot go from mhr_mu back to {mode!r}; the routing was dropped")
    if mode == "mhr_mu":
        for layer in layers:
            layer.average_inventory()
        _update_config(inner, mode=mode)
        return model
    heads = 1 if mode == "poly" else cfg.heads
    current = layers[0].heads
    if heads != current and current != 1:
        raise ConfigError(f"mhr: cannot turn a {current}-head routing into {heads} head(s) for mode {mode!r}")
    new_cfg = _update_config(inner, mode=mode)  # validates the heads
    for layer in layers:
        if heads != current:
            layer.expand_heads(heads)
        layer.set_inventory_trainable(mode != "mhr_z")
        layer.routing.requires_grad_(True)
    assert new_cfg.routing_heads == heads
    return model


def average_inventory(model: nn.Module) -> nn.Module:
    """MHR-mu: every layer's inventory becomes its average, a single trainable LoRA adapter without routing."""
    return to_mode(model, "mhr_mu")


def routing_weights(model: nn.Module, task_id: int | None = None) -> list[torch.Tensor]:
    """Per layer, the (heads, K) mixing weights of ``task_id`` (default: the current task), detached."""
    return [layer.routing_weights(task_id).detach() for layer in mhr_layers(model)]
