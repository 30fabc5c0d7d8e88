"""``get_peft_model``: the one entry point that turns a backbone into a PEFT model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.models.backbone import BackboneSpec, describe_backbone
from pointpeft.peft.attach import finish_token_context, install_token_context
from pointpeft.peft.aux_loss import collect_aux_losses
from pointpeft.peft.base import PeftConfig, PeftMethod, build_peft_config, method_for
from pointpeft.utils.misc import get_logger
from pointpeft.utils.modules import unwrap

log = get_logger("peft")


def is_peft_model(model: nn.Module) -> bool:
    cfg = getattr(unwrap(model), "peft_config", None)
    return cfg is not None and cfg.type != "full"


def get_method(model: nn.Module) -> PeftMethod | None:
    return getattr(unwrap(model), "_peft_method", None)


class _PeftTrain:
    """``model.train()`` that keeps frozen BatchNorms in eval mode (their statistics never update) when the PEFT
    config says ``frozen_bn: eval``; with ``train`` (the originals' ``base_model.train()``) they follow the model.

    A small callable object rather than a function bound with types.MethodType: pickle rebuilds bound methods by
    name (``getattr(model, "_peft_train")``), which failed, so PEFT models could be pickled but not unpickled.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, mode: bool = True) -> nn.Module:
        nn.Module.train(self.model, mode)
        if mode and self.model.peft_config.frozen_bn == "eval":
            for m in self.model._peft_frozen_norms:
                m.eval()
        return self.model


def get_peft_model(model: nn.Module, config: PeftConfig | Mapping[str, Any] | str) -> nn.Module:
    """Inject a PEFT method into ``model`` (in place) and freeze everything it does not train."""
    cfg = build_peft_config(config)
    if getattr(model, "peft_config", None) is not None:
        raise ValueError(f"model already has PEFT method {model.peft_config.type!r}; build a fresh base model")
    spec: BackboneSpec = describe_backbone(model)
    method = method_for(cfg)
    if method.families is not None and spec.family not in method.families:
        raise ConfigError(f"peft method {cfg.type!r} needs {method.needs}, which only {' / '.join(method.families)} "
                          f"backbones provide; {type(model).__name__} is a {spec.family}")
    for p in model.parameters():
        p.requires_grad_(False)
    ctx = install_token_context(spec.blocks) if method.adds_tokens else None
    method.inject(model, spec)
    if ctx is not None and not method.keeps_tokens:
        finish_token_context(spec.blocks, ctx)
    for part in method.trainable_modules(model, spec):
        params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
        for p in params:
            p.requires_grad_(True)
    model.peft_config = cfg
    model._peft_method = method
    model._peft_frozen_norms = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]
    # buffers saved with the adapter beyond those of training modules: the statistics of frozen BatchNorms that
    # update them (frozen_bn: train), and what the method names
    model._peft_state_modules = [*(model._peft_frozen_norms if cfg.frozen_bn == "train" else []),
                                 *method.state_modules(model, spec)]
    model.train = _PeftTrain(model)
    model.train(model.training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError(f"PEFT method {cfg.type!r} left no trainable parameter in {type(model).__name__}")
    log.info("injected %s into %s (%s)", cfg.type, type(model).__name__, spec.family)
    return model


def training_forward(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and weighted auxiliary losses of one training forward; plain ``model(inputs)`` for non-PEFT models."""
    method = get_method(model)
    if method is None:
        return model(inputs), collect_aux_losses(unwrap(model))
    return method.training_forward(model, inputs)
