"""PointLoRA: LoRA + shared prompt MLPs on attention and multi-scale token selection (``songw-zju/PointLoRA``).

The selector (:class:`pointpeft.peft.token_select.MultiScaleTokenSelector`) is a tokenizer hook that appends the
selected tokens after the patch tokens, so they get their position before every block and are pooled with the
patches, as in the released model (``x[:, 1:].max``). LoRA reuses :class:`pointpeft.peft.lora.LoraBranch`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pointpeft.peft.attach import attach_adapter
from pointpeft.peft.base import PeftMethod
from pointpeft.peft.lora.layers import LoraBranch
from pointpeft.peft.lora.method import target_linears
from pointpeft.peft.pointlora.config import PointLoraConfig
from pointpeft.peft.pointlora.layers import PointLoraModules, PromptedLoraBranch
from pointpeft.peft.token_select import MultiScaleTokenSelector

MODULES_ATTR = "peft_pointlora"
#: parameter names of the tokenizer parts the released recipe trains (the official Point-MAE layout)
TOKENIZER_PARAMS = {
    "encoder.first_conv": tuple(f"encoder.first_conv.{i}.{w}" for i in (0, 1, 3) for w in ("weight", "bias")),
    "pos_embed": tuple(f"pos_embed.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")),
}


class PointLora(PeftMethod):
    """Low-rank adaptation with token selection for point clouds."""

    name = "pointlora"
    config_class = PointLoraConfig
    #: backbone families it injects into: the token selection tokenizes the 3D input cloud again
    families = ("point_transformer",)
    needs = "the input clouds to tokenize them at more scales"

    @property
    def trains_backbone(self) -> tuple[str, ...]:
        """The backbone parameters it trains beyond head and CLS: those of ``modules_to_save`` (the released
        recipe: the tokenizer's first conv and the position embedding)."""
        return tuple(n for m in self.config.modules_to_save for n in TOKENIZER_PARAMS.get(m, (f"{m}.weight",
                                                                                              f"{m}.bias")))

    def inject(self, model: nn.Module, spec: Any) -> None:
        cfg = self.config
        ref = next(model.parameters())
        targets = {t: target_linears(spec, [t]) for t in cfg.target_modules}
        selector = MultiScaleTokenSelector(spec.embed_dim, cfg.token_scales(), cfg.mask_loss_weight,
                                           cfg.reuse_base_tokens, model.cfg.fps_backend)
        modules = PointLoraModules(spec.embed_dim, cfg.prompt_hidden, model.num_patch_tokens, selector,
                                   {t: (ls[0].in_features, ls[0].out_features) for t, ls in targets.items()})
        model.add_module(MODULES_ATTR, modules.to(ref.device, ref.dtype))
        model.register_tokenizer_hook(selector.tokenizer_hook)
        for block in spec.blocks:
            block.register_forward_pre_hook(modules.before_block)
        for t, linears in targets.items():
            for linear in linears:
                lora = LoraBranch(linear.in_features, linear.out_features, cfg.r, cfg.scaling, cfg.dropout)
                branch = PromptedLoraBranch(lora, modules.prompt_linear[t])
                attach_adapter(linear, branch.to(linear.weight.device, linear.weight.dtype), "parallel")
