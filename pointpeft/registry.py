"""Registries: the one way to choose a component by name from a config (Pointcept/peft style).

A config node names the component with ``type`` (or ``NAME``, Point-MAE's spelling); the remaining keys are passed
as keyword arguments, so a misspelled key raises instead of being silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pointpeft.errors import ConfigError


class Registry:
    """Maps lower-case names to classes or factory functions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None, *, force: bool = False) -> Callable[[Callable], Callable]:
        def deco(obj: Callable) -> Callable:
            key = (name or obj.__name__).lower()
            if not force and key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.name} registry: {key!r} is already registered to {self._items[key]!r}")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        key = str(name).lower()
        if key not in self._items:
            raise ConfigError(
                f"unknown {self.name} {name!r}; registered: {', '.join(sorted(self._items)) or '(none)'}"
            )
        return self._items[key]

    def __contains__(self, name: str) -> bool:
        return str(name).lower() in self._items

    def keys(self) -> list[str]:
        return sorted(self._items)

    def build(self, cfg: Mapping[str, Any] | str, **extra: Any) -> Any:
        """Build ``cfg['type']`` with the other keys as kwargs; unknown kwargs raise a ConfigError."""
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        cfg = dict(cfg)
        kind = cfg.pop("type", None) or cfg.pop("NAME", None)
        if kind is None:
            raise ConfigError(f"{self.name} config needs a 'type' key, got keys {sorted(cfg)}")
        obj = self.get(kind)
        kwargs = {**cfg, **extra}
        check_kwargs(obj, kwargs, where=f"{self.name} {kind!r}")
        return obj(**kwargs)


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError naming keys that ``fn`` does not accept (unless it takes **kwargs)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params or k == "self"]
    if unknown:
        allowed = [k for k in params if k != "self"]
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")


MODELS = Registry("model")
PEFT_METHODS = Registry("peft method")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
TASKS = Registry("task")  # what the trainer optimises: classification, mae_pretrain, ...
OPTIMIZERS = Registry("optimizer")  # adamw, adam, sgd: built from the optimizer: section
SCHEDULERS = Registry("scheduler")  # cosine (with warm-up), constant, step: built from the scheduler: section
