"""Point-MAE / Point-BERT fine-tuning transformers with the official state-dict layout.

``build_point_transformer('point_mae', num_classes=40)`` has exactly the 174 state-dict entries and 22,099,752
parameters of the released Point-MAE fine-tune model. The interface follows timm: ``forward_features`` returns
the normalised token sequence ``(B, 1 + G [+ prompts], C)``; ``forward_head`` pools CLS and the max over the G
patch tokens by default (``pool``: tokens a PEFT method appends after them are read only by the ``prompt_*`` pools).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pointpeft.models.backbone import BackboneSpec, register_backbone
from pointpeft.models.heads import HEADS
from pointpeft.models.pretrained import load_pretrained
from pointpeft.models.tokenizer import Encoder, Group, as_param_dtype
from pointpeft.models.transformer import TransformerEncoder
from pointpeft.registry import MODELS


def _prompts(x: torch.Tensor, g: int) -> torch.Tensor:
    if x.shape[1] <= 1 + g:
        raise ValueError("pooling reads prompt tokens, but the sequence has none after the CLS and patch tokens "
                         "(only a PEFT method that keeps its prompts, e.g. dapt or idpt, provides them)")
    return x[:, 1 + g:]


#: Pooled features for the head, by name: ``x`` is (B, 1 + G [+ prompts], C), CLS first, the G patch tokens, then
#: any prompt tokens a PEFT method keeps. DAPT's ``class_token``/``prompt_token``/``patch_token`` and IDPT's
#: ``cls_type`` are lists of these.
POOLS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "cls": lambda x, g: x[:, 0],
    "patch_max": lambda x, g: x[:, 1 : 1 + g].max(dim=1).values,
    "patch_mean": lambda x, g: x[:, 1 : 1 + g].mean(dim=1),
    "prompt_mean": lambda x, g: _prompts(x, g).mean(dim=1),
    "prompt_max": lambda x, g: _prompts(x, g).max(dim=1).values,
}
DEFAULT_POOL = ("cls", "patch_max")  # Point-MAE's head input: concat(CLS, max over patches)
#: how the classification head is initialised (PointTransformerConfig.head_init)
HEAD_INITS = ("torch", "trunc_normal")


def check_pool(pool: Sequence[str]) -> None:
    """ValueError naming ``pool`` unless it is a non-empty list of distinct :data:`POOLS` names."""
    if (isinstance(pool, str) or not isinstance(pool, Sequence) or not pool or len(set(pool)) != len(pool)
            or any(p not in POOLS for p in pool)):
        raise ValueError(f"pool must be a non-empty list of distinct names from {sorted(POOLS)}, got {pool!r}")


@dataclass
class TokenTransformerArch:
    """The fields a point transformer shares with its Point-MAE pretraining model (one place for both configs)."""

    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    encoder_dims: int = 384  # mini-PointNet output width; Point-BERT: 256 followed by reduce_dim
    num_group: int = 64
    group_size: int = 32


@dataclass
class PointTransformerConfig(TokenTransformerArch):
    """Architecture of a point transformer; every field is a config key of ``model:``."""

    num_classes: int = 40
    drop_path_rate: float = 0.1
    head: str = "point_mae"  # point_mae (BN head) | point_bert (plain head)
    head_hidden: int = 256
    head_dropout: float = 0.5
    head_init: str = "torch"  # torch: the head keeps PyTorch's layer init, as the originals fine-tuning from a
    #                           checkpoint (their trunc-normal init runs only from scratch); trunc_normal: 0.02 as the rest
    reduce_dim: bool = False  # Point-BERT: Linear(encoder_dims -> trans_dim) after the Encoder
    fps_backend: str = "auto"
    pos_every_block: bool = True  # Point-MAE adds the position embedding before every block; false: once (DAPT)
    pool: list[str] = field(default_factory=lambda: list(DEFAULT_POOL))  # head input, concatenated (POOLS)
    extra: dict = field(default_factory=dict)  # free-form notes carried into saved configs

    def __post_init__(self) -> None:
        if self.trans_dim % self.num_heads:
            raise ValueError(f"trans_dim {self.trans_dim} must be divisible by num_heads {self.num_heads}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {self.head!r}")
        if not self.reduce_dim and self.encoder_dims != self.trans_dim:
            raise ValueError("encoder_dims must equal trans_dim unless reduce_dim is true")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        check_pool(self.pool)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")


@dataclass
class TokenizerOutput:
    """One forward's tokenizer result, handed to the model's tokenizer hooks before the blocks run.

    A hook may read it (PointGST builds its graph bases from ``centers``) or return a copy with tokens appended to
    ``tokens`` and their position embeddings to ``pos`` (PointLoRA's selected multi-scale tokens). Appended tokens
    are ordinary sequence tokens: they get their position before every block and are pooled with the patch tokens.
    """

    points: torch.Tensor  # (B, N', 3) the clouds the tokenizer grouped (the input after the point hooks)
    centers: torch.Tensor  # (B, G, 3) the FPS centres of the G patch tokens
    tokens: torch.Tensor  # (B, T, C) patch tokens (T = G) followed by the tokens hooks appended
    pos: torch.Tensor  # (B, T, C) their position embeddings


#: ``hook(model, out) -> TokenizerOutput | None`` (None keeps ``out``)
TokenizerHook = Callable[["PointTransformer", TokenizerOutput], "TokenizerOutput | None"]
#: ``hook(model, pts) -> pts | None``: the cloud (B, N, 3) before grouping; may move points or add some (None keeps it)
PointHook = Callable[["PointTransformer", torch.Tensor], "torch.Tensor | None"]


class PointTransformer(nn.Module):
    """Tokenizer + transformer + head. Names follow the official checkpoints."""

    num_prefix_tokens = 1  # the CLS token

    def __init__(self, cfg: PointTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trans_dim = cfg.trans_dim
        self.num_classes = cfg.num_classes
        self.group_divider = Group(cfg.num_group, cfg.group_size, backend=cfg.fps_backend)
        self.encoder = Encoder(cfg.encoder_dims)
        if cfg.reduce_dim:
            self.reduce_dim = nn.Linear(cfg.encoder_dims, cfg.trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, cfg.trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.trans_dim))
        self.blocks = TransformerEncoder(cfg.trans_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio,
                                         drop_path_rate=cfg.drop_path_rate, pos_every_block=cfg.pos_every_block)
        self.norm = nn.LayerNorm(cfg.trans_dim)
        self.cls_head_finetune = self._new_head(cfg.num_classes)
        self._tokenizer_hooks: OrderedDict[int, TokenizerHook] = OrderedDict()
        self._point_hooks: OrderedDict[int, PointHook] = OrderedDict()
        self._num_pooled_tokens = cfg.num_group
        self._init_weights()

    def _init_weights(self, root: nn.Module | None = None) -> None:
        """trunc-normal 0.02 for every Linear/Conv1d, unit LayerNorms; the head as ``head_init`` says."""
        if root is None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos, std=0.02)
        keep = ({id(m) for m in self.cls_head_finetune.modules()} if self.cfg.head_init == "torch" else set())
        if root is not None and self.cfg.head_init == "torch":
            keep |= {id(m) for m in root.modules()}  # a fresh head (set_pool) keeps its PyTorch init too
        for m in (root or self).modules():
            if id(m) in keep:
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv1d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- timm-style interface ---------------------------------------------------------------------------------
    @property
    def num_patch_tokens(self) -> int:
        return self.cfg.num_group

    def tokenize(self, pts: torch.Tensor, group: Group | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points -> (patch tokens (B, G, C), centres (B, G, 3), position embeddings (B, G, C)).

        ``group`` replaces the model's own grouping (another ``num_group`` / ``group_size``: multi-scale methods).
        Point hooks (:meth:`register_point_hook`) run first; :meth:`embed_points` is the same without them.
        """
        return self.embed_points(self.apply_point_hooks(pts), group)

    def apply_point_hooks(self, pts: torch.Tensor) -> torch.Tensor:
        """The cloud after every point hook, in registration order (the cloud the tokenizer groups)."""
        for hook in list(self._point_hooks.values()):
            moved = hook(self, pts)
            pts = pts if moved is None else moved
        return pts

    def embed_points(self, pts: torch.Tensor, group: Group | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
        """:meth:`tokenize` of a cloud the point hooks already saw: tokenizer hooks that group it again at other
        scales (PointLoRA's token selection) call this, so a point hook runs once per forward.

        When the tokenizer is frozen (every PEFT method) and the cloud needs no gradient, nothing here does, so it
        runs under no_grad and backward stops at the first block; a cloud that needs gradients (trainable point
        prompts) gets them through the frozen tokenizer.
        """
        tok_params = [*self.encoder.parameters(), *self.pos_embed.parameters()]
        if hasattr(self, "reduce_dim"):
            tok_params += list(self.reduce_dim.parameters())
        needs_grad = torch.is_grad_enabled() and (
            any(p.requires_grad for p in tok_params) or (isinstance(pts, torch.Tensor) and pts.requires_grad))
        with torch.set_grad_enabled(needs_grad):
            neighborhood, center = (group or self.group_divider)(as_param_dtype(pts, self.encoder))
            tokens = self.encoder(neighborhood)
            if hasattr(self, "reduce_dim"):
                tokens = self.reduce_dim(tokens)
            pos = self.pos_embed(center)
        return tokens, center, pos

    def register_point_hook(self, hook: PointHook) -> RemovableHandle:
        """Extension point "points before the tokenizer": ``hook(model, pts) -> pts | None`` runs on every input
        cloud (B, N, 3) before grouping, in registration order (GAPrompt's point shift and point prompts; None keeps
        the cloud). Gradients of the returned cloud flow back through the frozen tokenizer (see :meth:`tokenize`).
        """
        handle = RemovableHandle(self._point_hooks)
        self._point_hooks[handle.id] = hook
        return handle

    def register_tokenizer_hook(self, hook: TokenizerHook) -> RemovableHandle:
        """Run ``hook(model, out: TokenizerOutput)`` after :meth:`tokenize` in every forward, in registration order.

        The extension point for methods that need the patch centres or the input clouds inside the blocks, or that
        add tokens of their own before the first block (see :class:`TokenizerOutput`).
        """
        handle = RemovableHandle(self._tokenizer_hooks)
        self._tokenizer_hooks[handle.id] = hook
        return handle

    def forward_features(self, pts: torch.Tensor) -> torch.Tensor:
        pts = self.apply_point_hooks(pts)
        tokens, center, pos = self.embed_points(pts)
        if self._tokenizer_hooks:
            out = TokenizerOutput(points=pts, centers=center, tokens=tokens, pos=pos)
            for hook in list(self._tokenizer_hooks.values()):
                out = hook(self, out) or out
            tokens, pos = out.tokens, out.pos
        self._num_pooled_tokens = tokens.shape[1]
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), pos], dim=1)
        x = self.blocks(x, pos)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The ``cfg.pool`` features concatenated (default: CLS, max over the patch tokens and the tokens tokenizer
        hooks appended). Prompt tokens that methods append inside the blocks come after them; only the
        ``prompt_*`` features read them (see :data:`POOLS`)."""
        g = self._num_pooled_tokens
        return torch.cat([POOLS[name](x, g) for name in self.cfg.pool], dim=-1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        feats = self.pool(x)
        return feats if pre_logits else self.cls_head_finetune(feats)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pts))

    def get_classifier(self) -> nn.Module:
        return self.cls_head_finetune

    def reset_classifier(self, num_classes: int) -> None:
        self.cfg.num_classes = num_classes
        self.num_classes = num_classes
        self.cls_head_finetune = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        return HEADS[self.cfg.head](self.trans_dim * len(self.cfg.pool), num_classes, self.cfg.head_hidden,
                                    self.cfg.head_dropout)

    def set_pool(self, pool: Sequence[str]) -> bool:
        """Pool ``pool`` (:data:`POOLS` names) for the head; when the head's input width changes, the head is built
        anew (randomly initialised) inside the same ``cls_head_finetune`` container. Returns whether it did."""
        check_pool(pool)
        width_changed = len(pool) != len(self.cfg.pool)
        self.cfg.pool = list(pool)
        if width_changed:
            ref = next(self.cls_head_finetune.parameters())
            fresh = self._new_head(self.num_classes).to(ref.device, ref.dtype)
            self._init_weights(fresh)
            for name in list(self.cls_head_finetune._modules):
                del self.cls_head_finetune._modules[name]
            for name, child in fresh.named_children():
                self.cls_head_finetune.add_module(name, child)
        return width_changed

    def set_pos_every_block(self, every_block: bool) -> None:
        """Add the position embedding before every block (Point-MAE) or once, before block 0 (DAPT)."""
        self.cfg.pos_every_block = bool(every_block)
        self.blocks.pos_every_block = bool(every_block)

    def no_weight_decay(self) -> set[str]:
        """Point-MAE / DAPT / IDPT ``add_weight_decay``: names containing ``token`` are not decayed; ``cls_pos`` is."""
        return {"cls_token"}

    def config_dict(self) -> dict:
        return asdict(self.cfg)


#: Named architectures. ``*_small`` are CPU-friendly variants (192 wide, 6 deep, 3 heads; same tokenizer).
ARCHITECTURES: dict[str, dict] = {
    "point_mae": {},
    "point_bert": {"encoder_dims": 256, "reduce_dim": True, "head": "point_bert"},
    "point_mae_small": {"trans_dim": 192, "encoder_dims": 192, "depth": 6, "num_heads": 3},
    "point_bert_small": {"trans_dim": 192, "encoder_dims": 256, "reduce_dim": True, "depth": 6, "num_heads": 3,
                         "head": "point_bert"},
    # Tiny test model: keeps the CPU test-suite fast.
    "point_mae_tiny": {"trans_dim": 64, "encoder_dims": 64, "depth": 2, "num_heads": 2, "num_group": 16,
                       "group_size": 8, "head_hidden": 64},
}


def build_point_transformer(name: str = "point_mae", num_classes: int = 40, **overrides) -> PointTransformer:
    """Build a named architecture; ``overrides`` are :class:`PointTransformerConfig` fields."""
    from pointpeft.config import build_dataclass
    from pointpeft.errors import ConfigError

    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown point transformer {name!r}; known: {sorted(ARCHITECTURES)}")
    fields = {**ARCHITECTURES[name], **overrides, "num_classes": num_classes}
    cfg = build_dataclass(PointTransformerConfig, fields, section="model")
    model = PointTransformer(cfg)
    model.arch_name = name
    return model


def _register(name: str) -> None:
    @MODELS.register(name)
    def _build(num_classes: int = 40, **overrides) -> PointTransformer:
        return build_point_transformer(name, num_classes=num_classes, **overrides)


for _name in ARCHITECTURES:
    _register(_name)


@register_backbone("point_transformer", lambda model: isinstance(model, PointTransformer))
def point_transformer_spec(model: PointTransformer) -> BackboneSpec:
    """Point-MAE / Point-BERT transformers: official weights through :func:`load_pretrained`."""
    tok = [model.encoder, model.pos_embed] + ([model.reduce_dim] if hasattr(model, "reduce_dim") else [])
    return BackboneSpec(
        model=model,
        family="point_transformer",
        blocks=list(model.blocks.blocks),
        embed_dim=model.trans_dim,
        num_heads=model.cfg.num_heads,
        head_modules=[model.cls_head_finetune],
        prefix_params=[model.cls_token, model.cls_pos],
        final_norm=model.norm,
        load_weights=load_pretrained,
        tokenizer_modules=tok,
    )
