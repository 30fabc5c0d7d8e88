"""PointGST options: Point Cloud Spectral Adapters (PCSA) in every block (Liang et al., TPAMI 2025).

Defaults are the released configs' values (``jerryfeng2003/PointGST``, ``cfgs/mae/finetune_*_pgst.yaml``: ``rank: 36``,
``local: 32``, the same for ModelNet40 and the three ScanObjectNN variants).

Parameter budget of the defaults on Point-MAE (D=384, L=12, r=36; counted by scripts/param_table.py):

* PCSA per block: down D*r + r = 13,860; up r*D + D = 14,208; one spectral linear r*r + r = 1,332 (shared by the
  global and the local branch, as released); two LayerNorms 2*2r = 144; 29,544 in all;
* 12 * 29,544 = 354,528, + CLS/cls_pos 768, + head 273,960 (40 classes) = 629,256 trainable on ModelNet40;
  with ScanObjectNN's 15-class head (267,535): 622,831. The paper reports 0.6M.
"""

from __future__ import annotations

from dataclasses import dataclass

from pointpeft.ops.graph_spectral import DISTANCE_SCALES
from pointpeft.peft.base import PeftConfig

#: ``released``: forward ``U @ x``, back ``U^T @ y`` (the released code; its comment says it keeps this to
#: reproduce the paper); ``textbook``: the graph Fourier transform ``U^T @ x``, back ``U @ y``
TRANSFORMS = ("released", "textbook")


@dataclass
class PointGSTConfig(PeftConfig):
    """``type: pointgst``: ``y = x + attn + ffn + up(silu(h) + [h + gft^-1(f(gft(h)))]_global + [...]_local)`` with
    ``h = down(x)`` on the block's post-attention tokens; the global transform uses the graph over all patch centres,
    the local one graphs over runs of ``local`` centres along a Z-order curve."""

    rank: int = 36  # width of the spectral domain (the down projection's output)
    local: int = 32  # centres per local graph (must divide the number of patches)
    transform: str = "released"  # released | textbook (see TRANSFORMS)
    distance_scale: str = "batch"  # batch (released: smallest distance of the whole batch) | cloud (per graph)
    zorder_wrap: bool = True  # true: negative coordinates wrap as in the released Z-order sort; false: plain curve
    scale: float = 1.0  # the adapter output is multiplied by this (released: 1)

    def validate(self) -> None:
        self.require_positive_int("rank", "local")
        if self.local < 2:
            raise ValueError(f"local must be at least 2 (a graph of one centre has no spectrum), got {self.local}")
        self.require_choice("transform", TRANSFORMS)
        self.require_choice("distance_scale", DISTANCE_SCALES)
        self.require_bool("zorder_wrap")
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise ValueError(f"scale must be a number, got {self.scale!r}")
