"""pointpeft: parameter-efficient fine-tuning (Adapter-X and baselines) of point-cloud and vision transformers."""

__version__ = "0.1.0"

from pointpeft.models import build_point_transformer  # noqa: E402
from pointpeft.peft import (  # noqa: E402
    get_peft_model,
    load_adapter,
    merge,
    print_trainable_parameters,
    save_adapter,
    trainable_parameter_report,
)


def build_model(cfg):  # noqa: ANN001, ANN201 - mapping in, nn.Module out
    """Build a backbone from a ``model:`` config node (``{type: point_mae, num_classes: 40, ...}``)."""
    from pointpeft.registry import MODELS

    return MODELS.build(cfg)


__all__ = [
    "__version__", "build_model", "build_point_transformer", "get_peft_model", "load_adapter", "merge",
    "print_trainable_parameters", "save_adapter", "trainable_parameter_report",
]
