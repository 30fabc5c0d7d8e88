"""Point-MAE masked-autoencoder pretraining with the official state-dict layout.

Why the names matter: the saved ``{"base_model": ...}`` file has the keys of Pang-Yatian/Point-MAE's ``Point_MAE``
(``MAE_encoder.{encoder,pos_embed,blocks.blocks,norm}``, ``mask_token``, ``decoder_pos_embed``,
``MAE_decoder.{blocks,norm}``, ``increase_dim.0``), so :func:`pointpeft.models.load_pretrained` (and the original
code) fine-tune from it exactly as from the released ``pretrain.pth``.

The model: each cloud is split into ``num_group`` patches (FPS + kNN, :class:`~pointpeft.models.tokenizer.Group`),
a random ``mask_ratio`` of them is hidden; the encoder sees the visible patch tokens only (no CLS), the decoder
gets the encoded visible tokens plus one shared ``mask_token`` per hidden patch (each with its centre's position
embedding), and ``increase_dim`` predicts the hidden patches' ``group_size`` points in local (centred)
coordinates; the loss is the Chamfer distance between predicted and true patches (``cdl2`` in Point-MAE).

One compute difference from the original, same parameters: the mini-PointNet runs on the visible patches only
(the original encodes all patches and then drops the masked ones), which saves ``mask_ratio`` of its cost. Its
BatchNorm statistics are then taken over a random 40% of the patches instead of all of them, an unbiased subset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.errors import ConfigError, InputError
from pointpeft.models.point_transformer import ARCHITECTURES, PointTransformerConfig, TokenTransformerArch
from pointpeft.models.tokenizer import Encoder, Group, as_param_dtype
from pointpeft.models.transformer import TransformerEncoder
from pointpeft.ops.chamfer import chamfer_l1, chamfer_l2
from pointpeft.registry import MODELS
from pointpeft.utils.modules import unwrap

#: Reconstruction losses by Point-MAE's config name.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cdl2": chamfer_l2, "cdl1": chamfer_l1}
MASK_TYPES = ("rand", "block")

#: Pretraining defaults per fine-tune architecture (on top of the ones derived from ARCHITECTURES).
PRETRAIN_DEFAULTS: dict[str, dict] = {
    "point_mae_tiny": {"decoder_depth": 1},  # keeps CPU tests fast
}


@dataclass
class PointMAEConfig(TokenTransformerArch):
    """Point-MAE pretraining architecture; every field is a key of the ``model:`` config node."""

    drop_path_rate: float = 0.1
    mask_ratio: float = 0.6
    mask_type: str = "rand"  # rand: a random subset of patches; block: the patches nearest a random centre
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    loss: str = "cdl2"  # cdl2 (Point-MAE) | cdl1
    fps_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.encoder_dims != self.trans_dim:
            raise ValueError(f"encoder_dims ({self.encoder_dims}) must equal trans_dim ({self.trans_dim}) for "
                             "Point-MAE (no reduce_dim)")
        for name, heads in (("num_heads", self.num_heads), ("decoder_num_heads", self.decoder_num_heads)):
            if heads < 1 or self.trans_dim % heads:
                raise ValueError(f"trans_dim {self.trans_dim} must be divisible by {name} {heads}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {list(MASK_TYPES)}, got {self.mask_type!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.decoder_depth < 1 or self.depth < 1:
            raise ValueError(f"depth and decoder_depth must be >= 1, got {self.depth}, {self.decoder_depth}")
        if self.num_group < 1 or self.group_size < 1:
            raise ValueError(f"num_group and group_size must be >= 1, got {self.num_group}, {self.group_size}")

    @property
    def num_mask(self) -> int:
        """Hidden patches per cloud during training (Point-MAE: ``int(mask_ratio * num_group)``)."""
        return int(self.mask_ratio * self.num_group)


def _init_trunc_normal(m: nn.Module) -> None:
    """Point-MAE's encoder init: trunc-normal(0.02) Linear/Conv1d weights, zero biases, unit LayerNorms."""
    if isinstance(m, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_xavier(m: nn.Module) -> None:
    """Point-MAE's decoder init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, G, ...) indexed along dim 1 by idx (B, K) -> (B, K, ...)."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], idx.shape[1], *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, flat)


class MaskTransformer(nn.Module):
    """``MAE_encoder``: masks patches, embeds the visible ones (mini-PointNet + position MLP), transformer, norm."""

    def __init__(self, cfg: PointMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_ratio = cfg.mask_ratio
        self.mask_type = cfg.mask_type
        self.encoder = Encoder(cfg.encoder_dims)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.trans_dim))
        self.blocks = TransformerEncoder(cfg.trans_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio,
                                         drop_path_rate=cfg.drop_path_rate)
        self.norm = nn.LayerNorm(cfg.trans_dim)
        self.apply(_init_trunc_normal)

    def make_mask(self, center: torch.Tensor, noaug: bool = False,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(visible indices (B, V), masked indices (B, M)), each sorted; M = int(mask_ratio * G), 0 if ``noaug``.

        ``rand`` hides a uniformly random subset per cloud; ``block`` hides the M centres nearest a random one.
        ``generator`` (on the centres' device) makes the masks reproducible, e.g. for evaluation.
        """
        B, G, _ = center.shape
        num_mask = 0 if noaug else int(self.mask_ratio * G)
        dev = center.device
        if num_mask == 0:
            vis = torch.arange(G, device=dev).expand(B, G)
            return vis, vis[:, :0]
        if self.mask_type == "rand":
            order = torch.rand(B, G, device=dev, generator=generator).argsort(dim=1)
        else:
            seed_idx = torch.randint(0, G, (B, 1), device=dev, generator=generator)
            seed = _take(center, seed_idx)  # (B, 1, 3)
            order = (center - seed).norm(dim=-1).argsort(dim=1, stable=True)
        masked = order[:, :num_mask].sort(dim=1).values
        vis = order[:, num_mask:].sort(dim=1).values
        return vis, masked

    def forward(self, neighborhood: torch.Tensor, center: torch.Tensor, noaug: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """neighborhood (B, G, S, 3), center (B, G, 3) -> (x_vis (B, V, C) normalised, vis_idx, mask_idx)."""
        vis_idx, mask_idx = self.make_mask(center, noaug=noaug, generator=generator)
        tokens = self.encoder(_take(neighborhood, vis_idx))
        pos = self.pos_embed(_take(center, vis_idx))
        x_vis = self.norm(self.blocks(tokens, pos))
        return x_vis, vis_idx, mask_idx


class TransformerDecoder(TransformerEncoder):
    """``MAE_decoder``: blocks (position embedding added before each) and a final norm on the last tokens."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate=drop_path_rate)
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_xavier)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, return_token_num: int) -> torch.Tensor:  # type: ignore[override]
        """The normalised last ``return_token_num`` tokens (the mask tokens' predictions)."""
        x = super().forward(x, pos)
        return self.norm(x[:, -return_token_num:])


class PointMAE(nn.Module):
    """Point-MAE pretraining model (official ``Point_MAE`` names). ``forward(pts)`` returns the loss."""

    def __init__(self, cfg: PointMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trans_dim = cfg.trans_dim
        self.group_size = cfg.group_size
        self.num_group = cfg.num_group
        self.group_divider = Group(cfg.num_group, cfg.group_size, backend=cfg.fps_backend)
        self.MAE_encoder = MaskTransformer(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.trans_dim))
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.trans_dim))
        self.MAE_decoder = TransformerDecoder(cfg.trans_dim, cfg.decoder_depth, cfg.decoder_num_heads,
                                              cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate)
        self.increase_dim = nn.Sequential(nn.Conv1d(cfg.trans_dim, 3 * cfg.group_size, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.loss_func = LOSSES[cfg.loss]

    # -- pieces ----------------------------------------------------------------------------------------------
    def _predict(self, neighborhood: torch.Tensor, center: torch.Tensor, noaug: bool = False,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Encode the visible patches, decode the hidden ones: local predictions (B, M, S, 3) and indices."""
        x_vis, vis_idx, mask_idx = self.MAE_encoder(neighborhood, center, noaug=noaug, generator=generator)
        B, M = mask_idx.shape
        if M == 0:
            raise InputError(f"nothing to reconstruct: mask_ratio {self.cfg.mask_ratio} x num_group "
                             f"{center.shape[1]} hides no patch; use mask_ratio >= {1 / center.shape[1]:.3g}")
        pos_vis = self.decoder_pos_embed(_take(center, vis_idx))
        pos_mask = self.decoder_pos_embed(_take(center, mask_idx))
        x_full = torch.cat([x_vis, self.mask_token.expand(B, M, -1)], dim=1)
        x_rec = self.MAE_decoder(x_full, torch.cat([pos_vis, pos_mask], dim=1), M)  # (B, M, C)
        conv = self.increase_dim[0]  # a 1x1 Conv1d on (B, C, M) == a Linear on channels-last tokens
        rebuild = F.linear(x_rec, conv.weight.squeeze(-1), conv.bias).reshape(B, M, self.group_size, 3)
        return {"rebuild": rebuild, "vis_idx": vis_idx, "mask_idx": mask_idx}

    def loss_parts(self, pts: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, pieces): the Chamfer loss over the hidden patches, batched as (B*M, S, 3) like the original."""
        neighborhood, center = self.group_divider(as_param_dtype(pts, self.MAE_encoder))
        out = self._predict(neighborhood, center, generator=generator)
        gt = _take(neighborhood, out["mask_idx"])
        rebuild = out["rebuild"]
        S = self.group_size
        loss = self.loss_func(rebuild.reshape(-1, S, 3), gt.reshape(-1, S, 3))
        out.update(neighborhood=neighborhood, center=center, gt=gt)
        return loss, out

    def forward(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """pts (B, N, 3) -> scalar reconstruction loss of randomly hidden patches."""
        return self.loss_parts(pts, generator=generator)[0]

    @torch.no_grad()
    def reconstruct(self, pts: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For visualisation: (input (B, N, 3), visible patches (B, V*S, 3), visible + reconstructed hidden patches
        (B, G*S, 3)), all in the input's coordinates. Call on a model in eval mode for stable BatchNorm."""
        neighborhood, center = self.group_divider(as_param_dtype(pts, self.MAE_encoder))
        out = self._predict(neighborhood, center, generator=generator)
        B, S = pts.shape[0], self.group_size
        vis = _take(neighborhood, out["vis_idx"]) + _take(center, out["vis_idx"]).unsqueeze(2)
        rec = out["rebuild"] + _take(center, out["mask_idx"]).unsqueeze(2)
        visible = vis.reshape(B, -1, 3)
        full = torch.cat([visible, rec.reshape(B, -1, 3)], dim=1)
        assert full.shape[1] == self.num_group * S
        return pts, visible, full

    def forward_features(self, pts: torch.Tensor) -> torch.Tensor:
        """The encoder's normalised tokens of every patch (no masking): (B, G, C)."""
        neighborhood, center = self.group_divider(as_param_dtype(pts, self.MAE_encoder))
        return self.MAE_encoder(neighborhood, center, noaug=True)[0]

    def extract_features(self, pts: torch.Tensor) -> torch.Tensor:
        """Pooled features for linear probes: concat(max, mean) over the unmasked tokens, (B, 2C)."""
        x = self.forward_features(pts)
        return torch.cat([x.max(dim=1).values, x.mean(dim=1)], dim=-1)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def pretrain_config(arch: str = "point_mae", **overrides) -> PointMAEConfig:
    """The pretraining config matching fine-tune architecture ``arch`` (pointpeft.models.ARCHITECTURES)."""
    from pointpeft.config import build_dataclass

    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r} for point_mae_pretrain; known: {sorted(ARCHITECTURES)}")
    finetune = PointTransformerConfig(**ARCHITECTURES[arch])
    if finetune.reduce_dim:
        raise ConfigError(f"architecture {arch!r} is a Point-BERT model (reduce_dim): it is pretrained with "
                          "dVAE tokens + MoCo, not with point_mae_pretrain; pick a point_mae* architecture")
    names = {f.name for f in dataclasses.fields(PointMAEConfig)}
    derived = {k: v for k, v in asdict(finetune).items() if k in names and k != "drop_path_rate"}
    derived["decoder_num_heads"] = finetune.num_heads
    fields = {**derived, **PRETRAIN_DEFAULTS.get(arch, {}), **overrides}
    return build_dataclass(PointMAEConfig, fields, section="model")


@MODELS.register("point_mae_pretrain")
def build_point_mae_pretrain(arch: str = "point_mae", **overrides) -> PointMAE:
    """Build the Point-MAE pretraining model for fine-tune architecture ``arch``; ``overrides`` are
    :class:`PointMAEConfig` fields (e.g. ``mask_ratio``, ``decoder_depth``)."""
    model = PointMAE(pretrain_config(arch, **overrides))
    model.arch_name = arch
    return model


def export_pretrain_checkpoint(model: nn.Module, path: str | os.PathLike, *, epoch: int = 0,
                               metrics: dict | None = None) -> Path:
    """Write ``{"base_model": state_dict, "epoch": epoch, "metrics": {...}}`` atomically, Point-MAE's pretrain
    layout (``MAE_encoder.*``, ``MAE_decoder.*``, ``mask_token``, ``decoder_pos_embed.*``, ``increase_dim.*``).

    Tensors are detached CPU copies and metrics plain floats, so the file loads with ``weights_only=True`` and
    :func:`pointpeft.models.load_pretrained` fills every encoder key of a fine-tune model of the same
    architecture. Returns the path.
    """
    from pointpeft.utils.io import atomic_torch_save

    target = unwrap(model)
    if not isinstance(target, PointMAE):
        raise InputError(f"export_pretrain_checkpoint needs a PointMAE model, got {type(target).__name__}")
    state = {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}
    obj = {
        "base_model": state,
        "epoch": int(epoch),
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
        "config": {"arch": getattr(target, "arch_name", None), **target.config_dict()},
    }
    return atomic_torch_save(obj, path)
