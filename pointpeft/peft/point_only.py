"""The check of methods that need what only a point transformer has: patch centres, the input clouds, its tokenizer.

Such methods reach them through :meth:`pointpeft.models.point_transformer.PointTransformer.register_tokenizer_hook`;
on any other backbone (a timm ViT) they refuse with a ConfigError that says why.
"""

from __future__ import annotations

from torch import nn

from pointpeft.errors import ConfigError


def require_point_transformer(model: nn.Module, method: str, needs: str) -> None:
    """ConfigError unless ``model`` offers tokenizer hooks; ``needs`` says what the method needs from it."""
    if not callable(getattr(model, "register_tokenizer_hook", None)):
        raise ConfigError(
            f"peft method {method!r} needs {needs}, which only point transformers "
            f"(pointpeft.models.build_point_transformer) provide; {type(model).__name__} has none"
        )
