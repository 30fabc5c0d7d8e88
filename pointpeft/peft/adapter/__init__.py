"""Bottleneck adapters: ``adapter`` (Houlsby-style, sequential after the FFN) and ``adaptformer`` (parallel, scaled).

Both take ``x_mode: true`` for their Adapter-X / AdaptFormer-X variants (shared SMoA from pointpeft.peft.adapterx).
"""

from pointpeft.peft.adapter.config import AdapterConfig, AdaptFormerConfig
from pointpeft.peft.adapter.layers import Bottleneck
from pointpeft.peft.adapter.method import Adapter, AdaptFormer
from pointpeft.peft.base import register_method

__all__ = ["AdaptFormer", "AdaptFormerConfig", "Adapter", "AdapterConfig", "Bottleneck"]

register_method(Adapter)
register_method(AdaptFormer)
