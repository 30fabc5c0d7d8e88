"""Parameter-efficient fine-tuning, peft style: ``get_peft_model`` / ``print_trainable_parameters`` /
``save_adapter`` / ``load_adapter`` / ``merge``, for point transformers and timm ViTs alike.

One sub-package (or module) per method, each registering itself in ``pointpeft.registry.PEFT_METHODS``.
"""

from pointpeft.models.backbone import BackboneSpec, describe_backbone
from pointpeft.peft import (
    adapter,  # noqa: F401  (registers adapter, adaptformer)
    adapterx,  # noqa: F401  (registers adapterx)
    dapt,  # noqa: F401  (registers dapt)
    full,  # noqa: F401  (registers full, linear)
    gaprompt,  # noqa: F401  (registers gaprompt)
    idpt,  # noqa: F401  (registers idpt)
    lora,  # noqa: F401  (registers lora)
    mhr,  # noqa: F401  (registers mhr)
    mosa,  # noqa: F401  (registers mosa)
    pointgst,  # noqa: F401  (registers pointgst)
    pointlora,  # noqa: F401  (registers pointlora)
    vpt,  # noqa: F401  (registers vpt_deep)
)
from pointpeft.peft.aux_loss import AuxLossMixin, collect_aux_losses
from pointpeft.peft.base import PeftConfig, PeftMethod, build_peft_config, register_method
from pointpeft.peft.inject import get_method, get_peft_model, is_peft_model, training_forward
from pointpeft.peft.state import (
    adapter_state_dict,
    load_adapter,
    merge,
    print_trainable_parameters,
    read_adapter_config,
    save_adapter,
    trainable_parameter_report,
)
from pointpeft.utils.modules import unwrap

__all__ = [
    "AuxLossMixin", "BackboneSpec", "PeftConfig", "PeftMethod", "adapter_state_dict", "build_peft_config",
    "collect_aux_losses", "describe_backbone", "get_method", "get_peft_model", "is_peft_model", "load_adapter",
    "merge", "print_trainable_parameters", "read_adapter_config", "register_method", "save_adapter",
    "trainable_parameter_report", "training_forward", "unwrap",
]
