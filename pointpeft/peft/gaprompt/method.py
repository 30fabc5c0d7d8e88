"""GAPrompt: geometry-aware point cloud prompts (Ai et al., ICML 2025), injected into a point transformer.

Forward, as ``PointTransformer_pointtokenprompt.forward`` in the release (``models/prompt_MAE.py``):

1. point hook (before the tokenizer): the shift prompter moves every point and gives the shape code
   (``shape_feature_mlp`` of its coarse features); the point prompts are appended to the cloud; the frozen tokenizer
   then groups and embeds cloud + prompts, with gradients flowing through it to both;
2. tokenizer hook: the patch centres' level-2 grouping and the token prompts' positions ``pos_embed(prompt_cor)``;
3. every block: a pre-hook inserts ``num_tokens`` token prompts after CLS (blocks < ``prompt_depth``); a post-hook
   runs prompt propagation (or the pre-hook, ``before_attention``), then ``x + adapter(x [+ 0.5 shape])`` on every
   token but CLS, and drops the prompts again, so each block sees fresh ones and the next block 1 + G tokens;
4. the head reads concat(CLS, max over patches, shape code): a new head of 3 x the width (a pre-hook appends the
   code), as the release's ``cls_head_finetune`` on ``trans_dim * 3``.

New modules keep the release's names (``point_prompt.points``, ``shift_net.*``, ``shape_feature_mlp.*``,
``prompt_cor``, ``blocks.blocks.i.{prompt_embeddings, adapter, out_transform}``, ``cls_head_finetune.*``).
Point-cloud only: a timm ViT has no cloud to prompt and no patch centres to propagate over (ConfigError).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pointpeft.models.heads import HEADS
from pointpeft.models.tokenizer import as_param_dtype, check_points
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.gaprompt.config import GAPromptConfig
from pointpeft.peft.gaprompt.layers import (
    GAPromptAdapter,
    GAPromptState,
    out_transform,
    propagate_prompts,
    token_prompts,
)
from pointpeft.peft.point_prompts import PointPrompt, PointShiftPrompter
from pointpeft.utils.modules import unwrap


class _InputHooks:
    """The point hook, tokenizer hook and head pre-hook (bound methods of a plain object: models copy and pickle)."""

    def __init__(self, cfg: GAPromptConfig, state: GAPromptState) -> None:
        self.cfg, self.state = cfg, state

    def points(self, model: nn.Module, pts: torch.Tensor) -> torch.Tensor:
        pts = as_param_dtype(pts, model.encoder)
        check_points(pts, max(model.cfg.num_group, model.cfg.group_size), "points")
        self.state.clear()
        if self.cfg.shift_prompter:
            moved, code = model.shift_net(pts)
            if not model.training:
                self.state.record_shift(pts, moved)
            pts, self.state.shape = moved, model.shape_feature_mlp(code).unsqueeze(1)
        if self.cfg.point_number:
            pts = model.point_prompt(pts)
        return pts

    def tokenized(self, model: nn.Module, out: Any) -> None:
        self.state.set_centers(out.centers, model.cfg.group_size, model.cfg.fps_backend)
        if self.cfg.prompt_depth:
            self.state.token_pos = model.pos_embed(model.prompt_cor)

    def head_input(self, head: nn.Module, args: tuple) -> tuple:
        return (torch.cat([args[0], self.state.shape[:, 0].to(args[0].dtype)], dim=-1),)


class _BlockHooks:
    """Block ``index``'s token prompts (pre-hook), prompt propagation and adapter (post-hook)."""

    def __init__(self, index: int, cfg: GAPromptConfig, state: GAPromptState) -> None:
        self.index, self.cfg, self.state = index, cfg, state

    @property
    def prompted(self) -> bool:
        return self.index < self.cfg.prompt_depth

    def pre(self, block: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if self.prompted:
            p = token_prompts(block, self.state, x.shape[0], self.cfg.prompt_dropout, self.cfg.shape_scale)
            x = torch.cat([x[:, :1], p.to(x.dtype), x[:, 1:]], dim=1)
        if self.cfg.propagation == "before_attention":
            x = propagate_prompts(x, self.state, block, self.cfg.propagation_gather)
        return (x, *args[1:])

    def post(self, block: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.propagation == "after_attention":
            out = propagate_prompts(out, self.state, block, cfg.propagation_gather)
        rest = out[:, 1:]
        z = rest
        if self.prompted and self.state.shape is not None:
            z = rest + cfg.shape_scale * self.state.shape.to(rest.dtype)
        rest = rest + block.adapter(z)
        if self.prompted:
            rest = rest[:, cfg.num_tokens:]
        return torch.cat([out[:, :1], rest], dim=1)


def _released_init(module: nn.Module) -> nn.Module:
    """kaiming-uniform(a=sqrt 5) weights, as the release re-initialises its shape MLP and head (= PyTorch's
    default for nn.Linear; kept explicit so the intent survives a change of default)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
    return module


class GAPrompt(PeftMethod):
    """Point prompts, point shift prompter, token prompts with the shape code, prompt propagation, adapters."""

    name = "gaprompt"
    config_class = GAPromptConfig
    zero_init_output = False  # the shift, adapters and new head change the output from the first step
    #: backbone families it injects into: point prompts need a 3D cloud, propagation the patch centres
    families = ("point_transformer",)
    needs = ("a point transformer (its point prompts and point shift act on the 3D input cloud, its prompt "
             "propagation on the patch centres)")
    #: the injected model's per-forward state (set by inject; read by the evaluation records)
    state: GAPromptState | None = None

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg: GAPromptConfig = self.config
        ref = model.cls_token  # the backbone's device and dtype
        D, arch = spec.embed_dim, model.cfg
        state = self.state = GAPromptState()
        hooks = _InputHooks(cfg, state)
        if cfg.point_number:
            model.add_module("point_prompt", PointPrompt(cfg.point_number, cfg.scale, cfg.factor).to(ref))
        if cfg.shift_prompter:
            shift = PointShiftPrompter(arch.num_group, arch.group_size, cfg.perturbation,
                                       fps_backend=arch.fps_backend)
            model.add_module("shift_net", shift.to(ref))
            mlp = nn.Sequential(nn.Linear(shift.shape_dim, 16), nn.GELU(), nn.Dropout(0.25), nn.Linear(16, D))
            model.add_module("shape_feature_mlp", _released_init(mlp).to(ref))
            head = HEADS[arch.head](D * (len(arch.pool) + 1), model.num_classes, arch.head_hidden, cfg.head_dropout)
            model.cls_head_finetune = _released_init(head).to(ref)
            model.cls_head_finetune.register_forward_pre_hook(hooks.head_input)
        if cfg.prompt_depth:
            model.prompt_cor = nn.Parameter(nn.init.trunc_normal_(torch.zeros(cfg.num_tokens, 3), std=0.06).to(ref))
        for i, block in enumerate(spec.blocks):
            if i < cfg.prompt_depth:
                block.prompt_embeddings = nn.Parameter(torch.zeros(cfg.num_tokens, D).to(ref))  # zeros, as released
            block.add_module("adapter", GAPromptAdapter(D, cfg.adapter_dim, cfg.adapter_scale,
                                                        cfg.adapter_dropout).to(ref))
            if cfg.propagation != "none":
                block.add_module("out_transform", out_transform(D).to(ref))
            block_hooks = _BlockHooks(i, cfg, state)
            block.register_forward_pre_hook(block_hooks.pre)
            block.register_forward_hook(block_hooks.post)
        model.register_point_hook(hooks.points)
        model.register_tokenizer_hook(hooks.tokenized)

    def start_evaluation(self, model: nn.Module) -> None:
        if self.state is not None:
            self.state.reset_shift_stats()

    def evaluation_records(self, model: nn.Module) -> dict[str, Any]:
        """``gaprompt``: the mean |shift| / mean |coordinate| of the evaluated clouds (how far the shift prompter
        moves points) and the point prompts as they enter the cloud (factor x points)."""
        out: dict[str, Any] = {}
        shift = self.state.shift_relative() if self.state is not None else None
        if shift is not None:
            out["shift_relative"] = shift
        prompt = getattr(unwrap(model), "point_prompt", None)
        if prompt is not None:
            out["point_prompts"] = (prompt.points[0] * prompt.factor).detach().cpu().tolist()
        return {"gaprompt": out} if out else {}

    def record_scalars(self, records: Mapping[str, Any]) -> dict[str, float]:
        rec = records.get("gaprompt") or {}
        return {"gaprompt/shift_relative": float(rec["shift_relative"])} if "shift_relative" in rec else {}

    def trainable_modules(self, model: nn.Module, spec: Any) -> list[nn.Module | nn.Parameter]:
        """The head in place now (the new, wider one with the shift prompter), CLS token, modules to save."""
        cfg = self.config
        parts: list[nn.Module | nn.Parameter] = [model.cls_head_finetune] if cfg.train_head else []
        if cfg.train_cls_token:
            parts += spec.prefix_params
        return parts + [spec.lookup(name) for name in cfg.modules_to_save]
