"""Trainable-parameter report, adapter-only save/load (safetensors + JSON), and merging."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointpeft import __version__
from pointpeft.errors import CheckpointError, ConfigError
from pointpeft.models.backbone import describe_backbone
from pointpeft.peft.base import build_peft_config
from pointpeft.peft.inject import get_method, get_peft_model
from pointpeft.utils.io import atomic_write, atomic_write_json
from pointpeft.utils.misc import get_logger
from pointpeft.utils.modules import unwrap

log = get_logger("peft")

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def trainable_parameter_report(model: nn.Module) -> dict[str, Any]:
    model = unwrap(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}


def print_trainable_parameters(model: nn.Module) -> str:
    """Print (and return) ``trainable params: X || all params: Y || trainable%: Z`` like peft does."""
    r = trainable_parameter_report(model)
    line = f"trainable params: {r['trainable']:,} || all params: {r['total']:,} || trainable%: {r['percent']:.4f}"
    print(line)
    return line


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors plus the buffers of modules that train (e.g. the head's BatchNorm statistics) and of the
    PEFT model's state modules (frozen BatchNorms that update their statistics, ``frozen_bn: train``)."""
    model = unwrap(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    state_modules = {id(m) for m in getattr(model, "_peft_state_modules", ())}
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            out[name] = p.detach()
    out.update(_persistent_buffers(model, lambda m: id(m) in state_modules
                                   or any(id(p) in trainable for p in m.parameters(recurse=False))))
    return out


def _persistent_buffers(model: nn.Module, keep: Callable[[nn.Module], bool]) -> dict[str, torch.Tensor]:
    """The state-dict buffers (by full name) of the modules ``keep`` accepts."""
    return {f"{mod_name}.{b_name}" if mod_name else b_name: b.detach()
            for mod_name, m in model.named_modules() if keep(m)
            for b_name, b in m.named_buffers(recurse=False) if b_name not in m._non_persistent_buffers_set}


def save_adapter(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter_config.json`` (atomically); nothing of the frozen backbone."""
    from safetensors.torch import save_file

    model = unwrap(model)
    cfg = getattr(model, "peft_config", None)
    if cfg is None:
        raise ValueError("save_adapter needs a model returned by get_peft_model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu().clone() for k, v in adapter_state_dict(model).items()}
    atomic_write(directory / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, tmp))
    meta = {
        "peft_config": cfg.to_dict(),
        "base_model": describe_backbone(model).describe(),
        "num_tensors": len(tensors),
        "num_parameters": int(sum(v.numel() for v in tensors.values())),
        "pointpeft_version": __version__,
        **(extra or {}),
    }
    atomic_write_json(directory / ADAPTER_CONFIG, meta)
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"no adapter config at {path} (expected {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    try:
        meta = json.loads(path.read_text())
        meta["peft_config"]["type"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a pointpeft adapter config ({e})") from None
    return meta


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Restore an adapter onto a base model (injecting the method first if needed); checks config and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_adapter_config(directory)
    try:
        cfg = build_peft_config(meta["peft_config"])
    except ConfigError as e:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: invalid peft_config: {e}") from None
    inner = unwrap(model)
    base = describe_backbone(inner).describe()
    saved = meta.get("base_model", {})
    diffs = {k: (saved.get(k), base[k]) for k in ("family", "depth", "embed_dim", "num_heads", "num_classes")
             if k in saved and saved[k] != base[k]}
    if diffs:
        detail = ", ".join(f"{k}: adapter {a!r} vs model {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(f"{directory}: adapter was trained on a different base model ({detail})")
    if getattr(inner, "peft_config", None) is None:
        get_peft_model(inner, cfg)
    elif inner.peft_config.to_dict() != cfg.to_dict():
        have, want = inner.peft_config.to_dict(), cfg.to_dict()
        diff = ", ".join(f"{k}: adapter {want.get(k)!r} vs model {have.get(k)!r}"
                         for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        raise CheckpointError(f"{directory}: adapter config does not match the model's PEFT config ({diff})")
    wpath = directory / ADAPTER_WEIGHTS
    if not wpath.is_file():
        raise CheckpointError(f"missing adapter weights {wpath}")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath}: corrupt adapter weights ({e})") from None
    own = inner.state_dict(keep_vars=True)
    for k, v in tensors.items():
        if k not in own:
            raise CheckpointError(f"{wpath}: tensor {k!r} has no place in this model")
        if own[k].shape != v.shape:
            raise CheckpointError(f"{wpath}: {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    expected = set(adapter_state_dict(inner))
    statistics = _frozen_bn_statistics(inner)
    missing = sorted(expected - set(tensors) - statistics)
    if missing:
        raise CheckpointError(f"{wpath}: adapter lacks {len(missing)} trainable tensor(s), e.g. {missing[:3]}")
    if statistics - set(tensors):  # a file written before frozen_bn existed: trained with the frozen statistics
        log.warning("%s holds no statistics of the frozen BatchNorms; the base model's are kept", wpath)
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    log.info("loaded adapter %s (%d tensors) from %s", cfg.type, len(tensors), directory)
    return model


def _frozen_bn_statistics(model: nn.Module) -> set[str]:
    """State-dict names of the buffers of frozen BatchNorms (saved with ``frozen_bn: train``)."""
    frozen = {id(m) for m in getattr(model, "_peft_frozen_norms", ())}
    return set(_persistent_buffers(model, lambda m: id(m) in frozen))


def merge(model: nn.Module) -> nn.Module:
    """Fold a mergeable method (LoRA, MoSA...) into the backbone weights; same outputs, no extra inference cost."""
    inner = unwrap(model)
    method = get_method(inner)
    if method is None:
        raise ValueError("merge needs a model returned by get_peft_model")
    method.merge(inner, describe_backbone(inner))
    return model
