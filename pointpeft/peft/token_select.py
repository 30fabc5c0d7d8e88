"""Multi-scale token selection: tokenize the cloud at other scales, score every token, append the top-k.

PointLoRA (Wang et al., CVPR 2025; ``songw-zju/PointLoRA``, ``models/PointLoRA.py``: ``MaskPredictor`` and
``PointTransformer_PointLoRA.forward``) groups the input cloud again at two more scales (128 patches of 32 points, 64
of 64) with the backbone's own mini-PointNet and position embedding, scores each token with a small MLP + sigmoid,
and appends the 32 and 8 highest-scored tokens (with their position embeddings) after the patch tokens. ``top-k`` is
not differentiable, so the scorer learns only from the auxiliary term ``mean(p log p + (1 - p) log(1 - p))`` (the
negative binary entropy; weight 1 and 0.25 for the two scales, times 0.004 in the released runner).

Any point-transformer method can use it: :class:`MultiScaleTokenSelector` is a tokenizer hook
(:meth:`pointpeft.models.point_transformer.PointTransformer.register_tokenizer_hook`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.models.point_transformer import TokenizerOutput
from pointpeft.models.tokenizer import Group
from pointpeft.peft.aux_loss import AuxLossMixin
from pointpeft.utils.modules import TransientState


@dataclass(frozen=True)
class TokenScale:
    """One extra tokenization: ``num_group`` patches of ``group_size`` points, of which ``top_k`` are appended."""

    num_group: int
    group_size: int
    top_k: int
    loss_weight: float = 1.0  # weight of this scale's entropy term

    def __post_init__(self) -> None:
        for name in ("num_group", "group_size", "top_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"scales: {name} must be a positive integer, got {v!r}")
        if self.top_k > self.num_group:
            raise ValueError(f"scales: top_k ({self.top_k}) cannot exceed num_group ({self.num_group})")
        if not isinstance(self.loss_weight, int | float) or isinstance(self.loss_weight, bool):
            raise ValueError(f"scales: loss_weight must be a number, got {self.loss_weight!r}")


def parse_scales(scales: Sequence[Mapping[str, Any]]) -> list[TokenScale]:
    """TokenScales from config mappings; ValueError naming the bad key or value."""
    if isinstance(scales, str | Mapping) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"scales must be a non-empty list of mappings, got {scales!r}")
    allowed = {f.name for f in dataclasses.fields(TokenScale)}
    out = []
    for s in scales:
        if not isinstance(s, Mapping):
            raise ValueError(f"scales: each entry must be a mapping of {sorted(allowed)}, got {s!r}")
        unknown = sorted(set(s) - allowed)
        if unknown:
            raise ValueError(f"scales: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        try:
            out.append(TokenScale(**s))
        except TypeError as e:
            raise ValueError(f"scales: {e}") from None
    return out


class TokenScorer(nn.Module):
    """``sigmoid(fc2(relu(fc1(t))))``: a keep-probability per token (PointLoRA's MaskPredictor, nn.Linear's init)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2)
        self.fc2 = nn.Linear(dim // 2, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(tokens))).squeeze(-1))


def negative_binary_entropy(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``mean(p log(p + eps) + (1 - p) log(1 - p + eps))``; minimising it drives the scores towards 0.5."""
    return torch.mean(p * torch.log(p + eps) + (1 - p) * torch.log(1 - p + eps))


def gather_top_k(scores: torch.Tensor, k: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows (B, k, ...) of each (B, T, ...) tensor at the ``k`` highest ``scores`` (B, T), highest first."""
    idx = torch.topk(scores, k, dim=1).indices
    return [torch.gather(t, 1, idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))
            for t in tensors]


class MultiScaleTokenSelector(AuxLossMixin, TransientState, nn.Module):
    """Tokenizer hook: appends the top-k tokens of every scale after the patch tokens; keeps the weighted entropy
    term of the last forward for :meth:`aux_losses`.

    A scale whose grouping equals the model's own (``num_group``/``group_size``) reuses the patch tokens instead of
    tokenizing again (``reuse_base_tokens``): the same values, one mini-PointNet pass fewer.
    """

    _TRANSIENT = ("_aux",)

    def __init__(self, dim: int, scales: Sequence[TokenScale], loss_weight: float = 0.004,
                 reuse_base_tokens: bool = True, fps_backend: str = "auto") -> None:
        super().__init__()
        self.scales = list(scales)
        self.loss_weight = float(loss_weight)
        self.reuse_base_tokens = reuse_base_tokens
        self.scorer = TokenScorer(dim)
        self.groupers = nn.ModuleList([Group(s.num_group, s.group_size, backend=fps_backend) for s in self.scales])
        self._aux: torch.Tensor | None = None

    @property
    def num_selected(self) -> int:
        return sum(s.top_k for s in self.scales)

    def _scale_tokens(self, model: nn.Module, out: TokenizerOutput, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        group, base = self.groupers[i], model.group_divider
        if self.reuse_base_tokens and (group.num_group, group.group_size) == (base.num_group, base.group_size):
            g = base.num_group
            return out.tokens[:, :g], out.pos[:, :g]
        tokens, _, pos = model.embed_points(out.points, group=group)
        return tokens, pos

    def tokenizer_hook(self, model: nn.Module, out: TokenizerOutput) -> TokenizerOutput:
        tokens, pos, loss = [out.tokens], [out.pos], None
        for i, scale in enumerate(self.scales):
            t, p = self._scale_tokens(model, out, i)
            scores = self.scorer(t)
            term = scale.loss_weight * negative_binary_entropy(scores)
            loss = term if loss is None else loss + term
            sel_t, sel_p = gather_top_k(scores, scale.top_k, t, p)
            tokens.append(sel_t)
            pos.append(sel_p)
        self._aux = self.loss_weight * loss
        return dataclasses.replace(out, tokens=torch.cat(tokens, dim=1), pos=torch.cat(pos, dim=1))

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {"token_select": self._aux} if self._aux is not None and self.loss_weight else {}

    def extra_repr(self) -> str:
        return f"scales={[(s.num_group, s.group_size, s.top_k) for s in self.scales]}, loss_weight={self.loss_weight}"
