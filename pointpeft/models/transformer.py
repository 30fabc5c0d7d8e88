"""Transformer blocks with timm's module names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2).

Point-MAE, Point-BERT and timm ViTs share these names, so PEFT methods find the same pieces in every backbone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


#: ``hook(x, pos) -> (x, pos)`` run before a block adds the position embedding (see TransformerEncoder).
TokenHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: Longest sequence for which CPU low-precision training uses the two-GEMM attention (see :func:`attention`).
GEMM_ATTENTION_MAX_TOKENS = 192


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention (B, H, T, d). ``F.scaled_dot_product_attention`` except for bf16/fp16 training on CPU with
    short sequences, where its flash kernel's backward is slow: q k^T, softmax in float32, times v as plain GEMMs was
    2-3x faster for fwd+bwd at T = 70-180 (B=32, 6 heads, AMX CPU; 8 vs 30 ms at T=76), while SDPA stays ahead in
    fp32, for inference, and from T ~ 256 on. Same numbers up to bf16 rounding."""
    T = q.shape[-2]
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and T <= GEMM_ATTENTION_MAX_TOKENS
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        a = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        a = a.float().softmax(dim=-1).to(v.dtype)
        if dropout_p > 0.0:
            a = F.dropout(a, dropout_p)
        return a @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """Point-MAE's encoder: the position embedding is added before every block (``pos_every_block``, the default);
    ``pos_every_block = False`` adds it once, before block 0, as DAPT's encoder does (a PEFT method sets it).

    PEFT methods may append tokens (prompts) at the end of the sequence inside a block; they get a zero position
    embedding here, so token order and the original tokens' positions are untouched. A token hook
    (:meth:`register_token_hook`) sees the tokens entering a block *before* the position embedding is added and may
    append tokens together with positions of their own (IDPT's prompt and ``prompt_pos``).
    """

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float | list[float] = 0.0, pos_every_block: bool = True) -> None:
        super().__init__()
        dpr = drop_path_rate if isinstance(drop_path_rate, list) else [
            x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        ])
        self.pos_every_block = pos_every_block
        self._token_hooks: dict[int, list[TokenHook]] = {}

    def register_token_hook(self, index: int, hook: TokenHook) -> None:
        """Run ``hook(x, pos) -> (x, pos)`` before block ``index`` (negative: from the end) adds the position
        embedding; tokens appended to ``x`` with positions appended to ``pos`` keep them in every later block."""
        if not -len(self.blocks) <= index < len(self.blocks):
            raise IndexError(f"token hook index {index} is outside the {len(self.blocks)} blocks")
        self._token_hooks.setdefault(index % len(self.blocks), []).append(hook)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            for hook in self._token_hooks.get(i, ()):
                x, pos = hook(x, pos)
            if not (self.pos_every_block or i == 0):
                x = block(x)
                continue
            extra = x.shape[1] - pos.shape[1]
            if extra > 0:
                pos = F.pad(pos, (0, 0, 0, extra))
            elif extra < 0:
                pos = pos[:, : x.shape[1]]
            x = block(x + pos)
        return x
