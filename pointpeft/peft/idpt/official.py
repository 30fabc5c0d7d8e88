"""Official IDPT checkpoints (zyh16143998882/ICCV23-IDPT ``PointTransformer``, ``prompt_module: dgcnn``) into an
IDPT-injected point transformer.

IDPT keeps its prompt module at ``blocks.cls`` (``DGCNNView``: ``conv1..3`` = Conv2d + BatchNorm2d, ``conv5`` =
Conv1d + BatchNorm1d; the BatchNorms are also registered as ``bn1..3``, ``bn5``) and ``prompt_pos`` at the top;
here they are ``blocks.blocks.<prompt_layer>.peft_prompt.{module, prompt_pos}`` with Linear weights (the 1x1
kernels' trailing dimensions dropped). Use as ``load_pretrained(model, path, convert=official_state)`` after
``get_peft_model(model, "idpt")``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pointpeft.peft.idpt.method import PromptInserter

_CONV = re.compile(r"^blocks\.cls\.conv(\d)\.(0|1)\.(.+)$")
_BN_ALIAS = re.compile(r"^blocks\.cls\.bn\d\.")  # the same tensors as conv<k>.1 (a module registered twice)


def _prompt_prefix(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, PromptInserter)]
    if len(names) != 1:
        raise ValueError(f"an official IDPT checkpoint needs a model with one IDPT prompt module, found {len(names)}")
    return names[0]


def official_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with IDPT's ``blocks.cls`` and ``prompt_pos`` mapped into the model's injected prompt module."""
    prefix = _prompt_prefix(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _BN_ALIAS.match(key):
            continue
        if key == "prompt_pos":
            out[f"{prefix}.prompt_pos"] = value
            continue
        m = _CONV.match(key)
        if m is None:
            out[key] = value
            continue
        index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        target = f"{prefix}.module.fuse" if index == 5 else f"{prefix}.module.convs.{index - 1}.proj"
        if part == "1":
            target = f"{prefix}.module.fuse_bn" if index == 5 else f"{prefix}.module.convs.{index - 1}.bn"
        elif leaf == "weight":
            value = value.reshape(value.shape[0], value.shape[1])  # Conv2d (C, 2C, 1, 1) / Conv1d (C, 3C, 1)
        out[f"{target}.{leaf}"] = value
    return out
