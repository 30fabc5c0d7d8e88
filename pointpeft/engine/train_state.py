"""The resumable training state (``ckpt-last.pth``) and the best weights (``best/``, peft adapter layout).

Only what trains is stored (adapter-only for PEFT methods, every weight for full fine-tuning); the frozen backbone
comes back from the pretrained checkpoint recorded in the run. Every file is written atomically, so a run killed
during a write keeps the previous checkpoint and ``--resume`` continues from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pointpeft.errors import CheckpointError
from pointpeft.peft import adapter_state_dict, unwrap
from pointpeft.utils.io import atomic_torch_save

STATE_FORMAT = "pointpeft-train-state"
STATE_VERSION = 1
LAST_NAME = "ckpt-last.pth"
BEST_DIR = "best"


def save_train_state(path: str | os.PathLike, model: nn.Module, **parts: Any) -> Path:
    """Write model (trainable tensors + their modules' buffers), optimizer, scheduler, scaler, RNG, epoch..."""
    state = {"format": STATE_FORMAT, "version": STATE_VERSION,
             "model": {k: v.detach().cpu().clone() for k, v in adapter_state_dict(model).items()}, **parts}
    return atomic_torch_save(state, path)


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path} (a run folder holds {LAST_NAME} after its first epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: cannot read the training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a pointpeft training state (no format: {STATE_FORMAT!r})")
    for key in ("model", "optimizer", "scheduler", "epoch", "rng"):
        if key not in state:
            raise CheckpointError(f"{path}: training state lacks {key!r}")
    return dict(state)


def load_trainable_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy saved trainable tensors (and buffers) into ``model``; every name and shape must match."""
    own = unwrap(model).state_dict(keep_vars=True)
    expected = set(adapter_state_dict(model))
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} tensor(s) have no place in this model, e.g. {unknown[:3]}")
    missing = sorted(expected - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} trainable tensor(s) missing, e.g. {missing[:3]}")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k!r} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))
