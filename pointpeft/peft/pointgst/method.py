"""PointGST: a Point Cloud Spectral Adapter beside every block's FFN, in the graph spectral domain of the patch
centres (``jerryfeng2003/PointGST``, ``models/PGST.py`` and ``models/PointTransformer.py``).

The bases are built once per forward by a tokenizer hook (:meth:`PointTransformer.register_tokenizer_hook`) from
the FPS centres; each block's adapter reads the block's post-attention tokens (the input of norm2) and its output is
added to the block's output, as the released ``Block.forward`` does (``x + drop_path(mlp(norm2(x))) + t``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pointpeft.errors import ConfigError
from pointpeft.peft.adapter.placement import attach_residual_branch
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.pointgst.config import PointGSTConfig
from pointpeft.peft.pointgst.layers import SpectralAdapter, SpectralBasisCache

ADAPTER_ATTR = "peft_spectral_adapter"


class PointGST(PeftMethod):
    """Point cloud Graph Spectral Tuning."""

    name = "pointgst"
    config_class = PointGSTConfig
    zero_init_output = True  # up projections start at zero
    #: backbone families it injects into: the graph needs the 3D patch centres
    families = ("point_transformer",)
    needs = "the 3D patch centres to build its graph spectral bases"

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        groups = model.num_patch_tokens
        if groups % cfg.local:
            raise ConfigError(f"pointgst: local ({cfg.local}) must divide the number of patches (model.num_group = "
                              f"{groups}); the released configs use local 32 with 64 or 128 patches")
        cache = SpectralBasisCache(cfg.local, cfg.distance_scale, cfg.zorder_wrap)
        model.register_tokenizer_hook(cache.tokenizer_hook)
        for block in spec.blocks:
            if hasattr(block, ADAPTER_ATTR):
                raise ValueError(f"{type(block).__name__} already carries a PointGST adapter")
            ref = block.mlp.fc1.weight  # the backbone's device and dtype
            adapter = SpectralAdapter(spec.embed_dim, cfg.rank, cache, cfg.transform, cfg.scale)
            # reads the block's post-attention tokens (norm2's input); its output joins the block's output outside
            # the FFN's drop path, as the released Block.forward (AdaptFormer's placement)
            attach_residual_branch(block, adapter.to(ref.device, ref.dtype), block, ADAPTER_ATTR)
