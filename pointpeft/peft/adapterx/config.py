"""Adapter-X options: the shared Sparse Mixture of Adapters (SMoA), the per-block Prompt Generator and block norm.

No official code exists, so every open design choice is a key here (docs/parity.md, section "Adapter-X").
The same options drive the "-X" plug-in of other methods (``adapter``/``adaptformer`` with ``x_mode: true``, DAPT-X),
where they are given as the nested ``x:`` mapping.

Parameter budget of the defaults (``preset: auto``; counted by scripts/param_table.py, see docs/params.md):

* sub-token width d = embed_dim / num_heads; one expert = d*r + r + r*d + d; SMoA = E experts + the shared router
  (d*16 projection, 16*E expert embeddings, 1 temperature); per block: norm2 (2*D) and, on blocks 0..L-2, a prompt
  generator (gamma, beta: 2*D); plus CLS token (+cls_pos for point transformers).
* ``point`` (Point-MAE, D=384, L=12): E=16, heads=2 (d=192), r=20 -> experts 16*7,892 = 126,272, router 3,329,
  norms 9,216, PGs 11*768 = 8,448, CLS+cls_pos 768 = 148,033, + head 273,960 (40 classes) = 421,993 trainable of
  22,237,801 = 1.90% (the paper's DAPT-X row: 1.88%, ~0.415M).
* ``vit`` (ViT-B/16, D=768, L=12): E=16, heads=4 (d=192), r=20 -> experts 126,272, router 3,329, norms 18,432,
  PGs 11*1,536 = 16,896, CLS 768 = 165,697 without the head = 0.19% of ViT-B/16 (the paper: 0.20%, ~0.17M).

Both presets give the same expert shape (192-wide sub-tokens, bottleneck 20), so the 2D and 3D pools are the same
module with the same parameter count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pointpeft.errors import ConfigError
from pointpeft.peft.base import PeftConfig

#: Budget presets (see the module docstring for the arithmetic). ``auto`` picks one from the backbone family.
PRESETS: dict[str, dict[str, int]] = {
    "point": {"num_experts": 16, "num_heads": 2, "bottleneck": 20},
    "vit": {"num_experts": 16, "num_heads": 4, "bottleneck": 20},
}
FAMILY_PRESET = {"point_transformer": "point", "timm_vit": "vit"}
POSITIONS = ("parallel", "sequential")
ROUTERS = ("shared", "per_block")


@dataclass
class XOptions:
    """The SMoA / prompt generator / block norm options (flat keys of ``adapterx``, the ``x:`` node elsewhere)."""

    preset: str = "auto"  # auto | point | vit: where num_experts/num_heads/bottleneck come from when left null
    num_experts: int | None = None  # experts in the one shared pool (null: from the preset)
    num_heads: int | None = None  # multi-head split: each token -> num_heads sub-tokens of embed_dim/num_heads
    bottleneck: int | None = None  # hidden width r of each expert (down d->r, GELU, up r->d; null: from preset)
    scale: float = 1.0  # the expert output is multiplied by this (and by the router probability)
    dropout: float = 0.0  # dropout on the experts' hidden activations (DAPT's 3D recipe uses 0.2)
    merge_proj: bool = False  # multi-head merge = concat; true adds a shared Linear(D, D) after the concat
    router: str = "shared"  # shared (one router for all blocks, as the figure draws) | per_block
    router_dim: int = 16  # X-MoE's low-dimensional routing space
    temperature_init: float = 0.07  # softmax temperature of the cosine router (X-MoE: learnable, 0.07)
    temperature_min: float = 0.01  # the learnable temperature never goes below this (X-MoE's clamp)
    learnable_temperature: bool = True  # false keeps temperature_init fixed
    balance_loss_weight: float = 0.01  # Switch load-balancing loss weight per block (0 disables it)
    position: str = "parallel"  # parallel: beside the FFN on norm2's output | sequential: on the FFN output
    prompt_generator: bool = True  # per-block PG: P = gamma * mean_t(SMoA out) + beta, appended as one token
    pg_gelu: bool = False  # GELU before the mean, as DAPT's internal prompt (the Adapter-X figure has none)
    train_block_norm: bool = True  # every block's norm2 (the FFN's input norm) trains, specific to its block

    def validate_x(self, prefix: str = "") -> None:
        """Raise ValueError naming the field (with ``prefix``, e.g. ``x.``) for bad values."""
        if self.preset != "auto" and self.preset not in PRESETS:
            raise ValueError(f"{prefix}preset must be 'auto' or one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("num_experts", "num_heads", "bottleneck"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{prefix}{name} must be a positive integer or null, got {v!r}")
        if not isinstance(self.router_dim, int) or self.router_dim < 1:
            raise ValueError(f"{prefix}router_dim must be a positive integer, got {self.router_dim!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"{prefix}router must be one of {list(ROUTERS)}, got {self.router!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"{prefix}position must be one of {list(POSITIONS)}, got {self.position!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{prefix}dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.temperature_min <= self.temperature_init:
            raise ValueError(
                f"{prefix}temperature_init ({self.temperature_init}) must be >= temperature_min "
                f"({self.temperature_min}) > 0"
            )
        if self.balance_loss_weight < 0:
            raise ValueError(f"{prefix}balance_loss_weight must be >= 0, got {self.balance_loss_weight!r}")

    def resolved(self, family: str, embed_dim: int) -> XOptions:
        """A copy with the preset's values filled in for this backbone; checks the split divides embed_dim."""
        preset = self.preset if self.preset != "auto" else FAMILY_PRESET.get(family, "vit")
        values = {k: v if getattr(self, k) is None else getattr(self, k) for k, v in PRESETS[preset].items()}
        out = dataclasses.replace(self, preset=preset, **values)
        if embed_dim % out.num_heads:
            raise ConfigError(
                f"adapterx num_heads={out.num_heads} does not divide the backbone width {embed_dim}; "
                "set num_heads to a divisor"
            )
        return out

    def x_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(XOptions)}


X_FIELDS = frozenset(f.name for f in dataclasses.fields(XOptions))


def build_x_options(node: dict[str, Any] | None, defaults: dict[str, Any] | None = None,
                    prefix: str = "x.") -> XOptions:
    """XOptions from a nested ``x:`` mapping over method-specific ``defaults``; unknown keys name themselves."""
    node = dict(node or {})
    unknown = sorted(set(node) - X_FIELDS)
    if unknown:
        raise ValueError(f"unknown key(s) {[prefix + k for k in unknown]}; allowed: {sorted(X_FIELDS)}")
    opts = XOptions(**{**(defaults or {}), **node})
    opts.validate_x(prefix)
    return opts


@dataclass
class AdapterXConfig(XOptions, PeftConfig):
    """``type: adapterx``: shared SMoA beside every FFN + per-block prompt generator + block norm2."""

    def validate(self) -> None:
        self.validate_x()

    def x_options(self) -> XOptions:
        return XOptions(**self.x_dict())
