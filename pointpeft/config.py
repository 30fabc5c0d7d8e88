"""YAML configs with ``_base_`` inheritance, dotted overrides and strict keys.

* ``_base_: [../base.yaml, other.yaml]`` — parents, relative to the file, merged deeply in order; the child wins.
  A mapping with ``_delete_: true`` replaces its parent's mapping instead of merging into it.
* ``apply_overrides(cfg, ["model.depth=6", "peft.num_experts=8"])`` — values are parsed as YAML scalars.
* Every leaf remembers the file that set it (``cfg.source_of("model.depth")``), so errors can name file and key.
* Unknown keys are errors: top-level keys are checked against :data:`TOP_LEVEL_KEYS`, sections against the
  dataclass or component that consumes them (:func:`build_dataclass`, ``Registry.build``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pointpeft.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` / ``1e3`` as floats (YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML the way every pointpeft config is parsed."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

#: Sections a run config may have. Consumers validate what is inside each section.
TOP_LEVEL_KEYS = {
    "model",  # backbone: registry MODELS (type: point_mae | point_mae_small | point_bert | vit ...)
    "peft",  # method: registry PEFT_METHODS (type: adapterx | lora | ...); absent = full fine-tuning
    "data",  # data sets, loaders and augmentation
    "optimizer",
    "scheduler",
    "train",  # epochs, amp, grad clip, evaluation cadence, checkpoints ...
    "pretrain",  # MAE pretraining options
    "fewshot",
    "seed",
    "exp_name",
    "description",
}


class Config(dict):
    """A nested dict that also remembers which file set each dotted key."""

    def __init__(self, *args: Any, sources: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sources: dict[str, str] = dict(sources or {})

    def source_of(self, dotted: str) -> str:
        """The file (or '<override>') that set ``dotted`` or its closest parent."""
        parts = dotted.split(".")
        while parts:
            key = ".".join(parts)
            if key in self.sources:
                return self.sources[key]
            parts.pop()
        return self.sources.get("", "<unknown>")

    def get_path(self, dotted: str, default: Any = None) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the resolved config (no _base_) as YAML, atomically."""
        from pointpeft.utils.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _record_sources(node: Any, prefix: str, source: str, out: dict[str, str]) -> None:
    if prefix:
        out[prefix] = source
    if isinstance(node, Mapping):
        for k, v in node.items():
            _record_sources(v, f"{prefix}.{k}" if prefix else str(k), source, out)


def _merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, Mapping) and v.get("_delete_"):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), check_top_level: bool = True) -> Config:
    """Load a YAML config with its ``_base_`` chain, apply dotted overrides, validate top-level keys."""
    data, sources = _load_recursive(Path(path).resolve(), stack=())
    cfg = Config(data, sources=sources)
    cfg.sources[""] = str(Path(path))
    apply_overrides(cfg, overrides)
    if check_top_level:
        unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
        if unknown:
            where = ", ".join(f"{k!r} (from {cfg.source_of(k)})" for k in unknown)
            raise ConfigError(f"unknown top-level config key(s): {where}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    return cfg


def _load_recursive(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    if path in stack:
        raise ConfigError(f"_base_ cycle: {' -> '.join(map(str, (*stack, path)))}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of them")
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for b in bases:
        bpath = (path.parent / b).resolve()
        if not bpath.is_file():
            raise ConfigError(f"{path}: _base_ file {b!r} not found (looked at {bpath})")
        bdata, bsrc = _load_recursive(bpath, (*stack, path))
        merged = _merge(merged, bdata)
        sources.update(bsrc)
    merged = _merge(merged, data)
    _record_sources(data, "", str(path), sources)
    return merged, sources


def parse_value(text: str) -> Any:
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``a.b.c=value`` strings in place; intermediate mappings are created when missing."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        parts = key.split(".")
        node: Any = cfg
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = parse_value(text)
        _record_sources(node[parts[-1]], key, "<override>", cfg.sources)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any, source: str) -> None:
    """Set ``dotted`` (creating missing sections) and record ``source`` as who set it (tools that build configs)."""
    node: Any = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    cfg.sources[dotted] = source


def build_dataclass(cls: type[T], node: Mapping[str, Any] | None, section: str, cfg: Config | None = None) -> T:
    """Instantiate a config dataclass from a mapping; unknown keys raise ConfigError naming file and key."""
    node = dict(node or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(node) - names)
    if unknown:
        where = cfg.source_of(f"{section}.{unknown[0]}") if cfg is not None else "<config>"
        raise ConfigError(
            f"{where}: unknown key(s) {[f'{section}.{k}' for k in unknown]}; allowed in {section!r}: {sorted(names)}"
        )
    try:
        return cls(**node)
    except (TypeError, ValueError) as e:
        where = cfg.source_of(section) if cfg is not None else "<config>"
        raise ConfigError(f"{where}: invalid {section!r} section: {e}") from None
