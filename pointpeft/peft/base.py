"""The contract every PEFT method follows, and its checked registration (peft style).

A method is a :class:`PeftMethod` subclass with a :class:`PeftConfig` dataclass. ``get_peft_model`` freezes the whole
backbone, calls :meth:`PeftMethod.inject` (which adds modules — new parameters are trainable — and hooks), then
unfreezes the existing parts the method names in :meth:`PeftMethod.trainable_modules` (head, CLS token, norms...).
Freezing is decided in this one place, never by name substrings in an optimizer builder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.aux_loss import collect_aux_losses
from pointpeft.registry import PEFT_METHODS
from pointpeft.utils.modules import unwrap

FROZEN_BN_MODES = ("train", "eval")


@dataclass
class PeftConfig:
    """Options shared by every method. Subclasses add their own fields (each with a comment saying what it does)."""

    type: str = ""
    train_head: bool = True  # the classification head (and its BatchNorm statistics) trains
    train_cls_token: bool = True  # CLS token (and cls_pos for point transformers) train, as in DAPT/IDPT
    modules_to_save: list[str] = field(default_factory=list)  # extra module/parameter names to train and save
    # frozen BatchNorms (the tokenizer's) in train(): "train" normalises with batch statistics and updates the
    # running ones, as the originals' base_model.train() does (the statistics then travel with the adapter file);
    # "eval" keeps them in eval mode with the pretrained statistics
    frozen_bn: str = "train"

    def __post_init__(self) -> None:
        self.require_choice("frozen_bn", FROZEN_BN_MODES)
        self.validate()

    def validate(self) -> None:
        """Subclasses check their values here and raise ValueError with the field name."""

    def require_positive_int(self, *names: str) -> None:
        """ValueError naming the first field that is not an int >= 1 (bools are not integers here)."""
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def require_choice(self, name: str, choices: Sequence[str]) -> None:
        """ValueError unless the field is one of ``choices``."""
        v = getattr(self, name)
        if v not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")

    def require_bool(self, *names: str) -> None:
        """ValueError naming the first field that is not true or false (YAML's ``yes`` strings are not)."""
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be true or false, got {v!r}")

    def require_probability(self, name: str) -> None:
        """ValueError unless the field is a dropout-like rate in [0, 1)."""
        v = getattr(self, name)
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PeftMethod:
    """How a method changes a backbone. Stateless apart from ``self.config``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PeftConfig]] = PeftConfig
    #: ``merge`` folds the method into the backbone's weights (LoRA, MoSA...).
    mergeable: ClassVar[bool] = False
    #: prompt tokens the method appends stay in the sequence after the last block (the head pools them, e.g.
    #: DAPT's prompt mean); otherwise get_peft_model strips them there.
    keeps_tokens: ClassVar[bool] = False
    #: backbone families (``BackboneSpec.family``) the method injects into; None: every family. A method that needs
    #: what only some backbones have (PointGST's patch centres) declares them; get_peft_model refuses the others
    #: with a ConfigError before anything is changed, saying what the method ``needs`` from them.
    families: ClassVar[tuple[str, ...] | None] = None
    needs: ClassVar[str] = "what only those backbones have"

    #: prompt tokens are appended inside the blocks: get_peft_model records the backbone's own token count at the
    #: first block (and, unless ``keeps_tokens``, strips the prompts after the last one). A property may compute it.
    adds_tokens: ClassVar[bool] = False
    #: the injected model computes exactly the base model's function at initialisation (zero-initialised up
    #: projections); the shared PEFT tests check it for every method that declares it.
    zero_init_output: ClassVar[bool] = False
    #: dotted-name suffixes of existing backbone parameters the method trains (e.g. Adapter-X's block norms
    #: ``norm2.weight``); everything else of the backbone stays frozen, which the shared PEFT tests check.
    trains_backbone: ClassVar[tuple[str, ...]] = ()
    #: a training step trains only the experts its forwards drew (MoSA), so some trainable parameters may get no
    #: gradient in a given step; the shared PEFT tests allow that for methods that declare it.
    drawn_experts: ClassVar[bool] = False

    def __init__(self, config: PeftConfig) -> None:
        self.config = config

    def inject(self, model: nn.Module, spec: Any) -> None:
        """Add the method's modules and hooks. New parameters are created trainable."""

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        """Existing parts of the backbone that train (beyond the injected modules)."""
        parts: list[nn.Module | nn.Parameter] = []
        if self.config.train_head:
            parts += spec.head_modules
        if self.config.train_cls_token:
            parts += spec.prefix_params
        for name in self.config.modules_to_save:
            parts.append(spec.lookup(name))
        return parts

    def state_modules(self, model: nn.Module, spec: Any) -> list[nn.Module]:
        """Modules without trainable parameters whose buffers still travel with the adapter file (a fixed random
        tensor the method made, e.g. IDPT's untrained ``prompt_pos``). Default: none."""
        return []

    def training_forward(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training forward: logits and the method's weighted auxiliary losses (load balance, consistency)."""
        logits = model(inputs)
        return logits, collect_aux_losses(unwrap(model))

    def param_group_options(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Optimiser options (``lr``, ``weight_decay``) for some trainable parameters, by their name in ``model``.

        The engine's optimiser builder puts each distinct option set in its own param group, so a method can give
        e.g. its routing logits their original learning rate without the engine knowing the method. Default: none.
        """
        return {}

    def start_evaluation(self, model: nn.Module) -> None:
        """Called by the engine before every evaluation pass, e.g. to reset what :meth:`evaluation_records`
        counts (Adapter-X's expert usage). Default: nothing."""

    def evaluation_records(self, model: nn.Module) -> dict[str, Any]:
        """JSON-able records of the evaluation pass just run, saved in results.json beside the metrics (Adapter-X:
        ``expert_usage``, blocks x experts). The engine stores them without knowing what they are. Default: none."""
        return {}

    def record_scalars(self, records: Mapping[str, Any]) -> dict[str, float]:
        """TensorBoard scalars (tag -> value) drawn from :meth:`evaluation_records`'s output. Default: none."""
        return {}

    def merge(self, model: nn.Module, spec: Any) -> None:
        raise ConfigError(f"method {self.name!r} has nothing to merge into the backbone (mergeable: LoRA, MoSA)")


def register_method(method_cls: type[PeftMethod]) -> type[PeftMethod]:
    """Register a method under ``method_cls.name`` (unique, lower case) with its config class; checked."""
    name = method_cls.name
    if not name or name != name.lower():
        raise ValueError(f"PEFT method name must be a non-empty lower-case string, got {name!r}")
    if not (isinstance(method_cls.config_class, type) and issubclass(method_cls.config_class, PeftConfig)):
        raise TypeError(f"{method_cls.__name__}.config_class must subclass PeftConfig")
    PEFT_METHODS.register(name)(method_cls)
    return method_cls


def build_peft_config(config: PeftConfig | Mapping[str, Any] | str) -> PeftConfig:
    """A PeftConfig from an object, a dict / YAML node naming the method, or just the method's name."""
    if isinstance(config, PeftConfig):
        return config
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"peft config must be a mapping with a 'type' key, got {type(config).__name__}")
    node = dict(config)
    kind = node.get("type") or node.pop("NAME", None)
    if not kind:
        raise ConfigError(f"peft config needs a 'type' key; registered methods: {PEFT_METHODS.keys()}")
    method_cls = PEFT_METHODS.get(kind)
    node["type"] = method_cls.name
    cfg_cls = method_cls.config_class
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(node) - names)
    if unknown:
        raise ConfigError(f"peft method {kind!r}: unknown key(s) {unknown}; allowed: {sorted(names - {'type'})}")
    try:
        return cfg_cls(**node)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"peft method {kind!r}: {e}") from None


def method_for(config: PeftConfig) -> PeftMethod:
    return PEFT_METHODS.get(config.type)(config)
