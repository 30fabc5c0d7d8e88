"""Adapter-X layers: the shared Sparse Mixture of Adapters (SMoA), its X-MoE router, the prompt generator.

Class API (reused by DAPT-X and the ``x_mode`` of adapter/adaptformer):

* :class:`SMoA` — ONE per model (``model.peft_smoa``): an :class:`ExpertPool`, the shared :class:`CosineRouter`
  (``router: shared``) and the optional merge projection. ``SMoA(embed_dim, opts)`` with resolved
  :class:`~pointpeft.peft.adapterx.config.XOptions`; ``smoa(x, router=None) -> SMoAOutput``.
* :class:`SMoABlock` — one per transformer block: references the pool without registering it (so the pool's
  parameters are counted and saved once), owns the block's router when ``router: per_block`` and its
  :class:`PromptGenerator`; records routing choices / usage; produces the Switch load-balancing loss.
* :func:`switch_balance_loss` — ``E * sum_e f_e * P_e`` (Switch Transformer, eq. 4).

Dispatch is vectorised: sub-tokens are sorted by their expert and each expert runs once on its contiguous slice
(a loop over experts, never over tokens). Measured fwd+bwd on CPU for the 3D sizes (B=32, T=76 tokens, 2 heads ->
4,864 sub-tokens of width 192, 16 experts, r=20), 1 thread / 2 threads on a busy machine: sorted loop 17 / 36 ms,
dense compute of every expert with a one-hot mask 40 / 77 ms, per-token gathered expert weights + bmm 212 / 890 ms.
The sorted loop is kept (one host sync per block for the split sizes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.peft.adapterx.config import XOptions
from pointpeft.peft.aux_loss import AuxLossMixin


class ExpertPool(nn.Module):
    """``num_experts`` bottleneck adapters (down d->r, GELU, dropout, up r->d; up zero-initialised) as batched weights."""

    def __init__(self, num_experts: int, dim: int, bottleneck: int, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_experts, self.dim, self.bottleneck, self.scale = num_experts, dim, bottleneck, float(scale)
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default range for the down projection
        self.w_down = nn.Parameter(torch.empty(num_experts, dim, bottleneck).uniform_(-bound, bound))
        self.b_down = nn.Parameter(torch.zeros(num_experts, bottleneck))
        self.w_up = nn.Parameter(torch.zeros(num_experts, bottleneck, dim))  # zero: no change at init
        self.b_up = nn.Parameter(torch.zeros(num_experts, dim))
        self.dropout = nn.Dropout(dropout)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on ``x`` (n, d), without scale or gate."""
        h = self.dropout(F.gelu(x @ self.w_down[e] + self.b_down[e]))
        return h @ self.w_up[e] + self.b_up[e]

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``scale * gate[n] * expert_{idx[n]}(x[n])`` for every row of ``x`` (N, d).

        Runs in float32 with autocast off: the per-expert GEMMs change shape every step, and under bf16 autocast each
        new shape made oneDNN build a kernel (340 us vs 25 us per GEMM), which made a bf16 step 2-3x slower than fp32
        (benchmarks/README.md); the experts are ~1% of a step's FLOPs. The gate multiplies the r-wide hidden units
        (``g*(h W + b) = (g*h) W + g*b``), so no d-wide copy is kept for its gradient.
        """
        dtype, wdtype = x.dtype, self.w_down.dtype  # compute in the weights' own dtype (fp32, or fp64 in tests)
        with torch.autocast(x.device.type, enabled=False):
            order = idx.argsort()
            counts = torch.bincount(idx, minlength=self.num_experts).tolist()
            xs = x.to(wdtype).index_select(0, order).split(counts)
            gs = (gate.to(wdtype) * self.scale).index_select(0, order).unsqueeze(-1).split(counts)
            ys = []
            for e, (c, g) in enumerate(zip(xs, gs, strict=True)):
                if c.shape[0]:
                    h = self.dropout(F.gelu(torch.addmm(self.b_down[e], c, self.w_down[e]))) * g
                    ys.append(torch.addmm(g * self.b_up[e], h, self.w_up[e]))
            y = torch.cat(ys) if ys else x.new_zeros(0, self.dim, dtype=wdtype)
            out = torch.empty_like(y).index_copy(0, order, y)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, bottleneck={self.bottleneck}, scale={self.scale}"


class CosineRouter(nn.Module):
    """X-MoE router: bias-free projection to ``router_dim``, cosine similarity with L2-normalised expert embeddings
    (orthogonal init), divided by a learnable temperature clamped at ``temperature_min``."""

    def __init__(self, dim: int, num_experts: int, router_dim: int = 16, temperature_init: float = 0.07,
                 temperature_min: float = 0.01, learnable_temperature: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, router_dim, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(num_experts, router_dim))
        nn.init.orthogonal_(self.expert_embeddings)
        log_inv_t = torch.tensor([math.log(1.0 / temperature_init)])
        if learnable_temperature:
            self.log_inv_temperature = nn.Parameter(log_inv_t)
        else:
            self.register_buffer("log_inv_temperature", log_inv_t)
        self.max_log_inv_t = math.log(1.0 / temperature_min)

    def temperature(self) -> torch.Tensor:
        return self.log_inv_temperature.clamp(max=self.max_log_inv_t).exp().reciprocal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routing logits (N, E) for sub-tokens (N, d)."""
        z = F.normalize(self.proj(x), dim=-1, eps=1e-6)  # a zero token must not make a 1e12 gradient
        emb = F.normalize(self.expert_embeddings, dim=-1)
        inv_t = self.log_inv_temperature.clamp(max=self.max_log_inv_t).exp()
        return (z @ emb.t()) * inv_t


class SMoAOutput(NamedTuple):
    out: torch.Tensor  # (B, T, D): merged, probability-weighted, scaled expert outputs
    probs: torch.Tensor  # (B*T*heads, E) router probabilities
    choice: torch.Tensor  # (B, T, heads) chosen expert per sub-token


class SMoA(nn.Module):
    """The shared pool: experts on sub-tokens (multi-head split), the shared router, optional merge projection."""

    def __init__(self, embed_dim: int, opts: XOptions) -> None:
        super().__init__()
        if opts.num_experts is None or opts.num_heads is None or opts.bottleneck is None:
            raise ValueError("SMoA needs resolved options (XOptions.resolved(family, embed_dim))")
        self.opts = opts
        self.embed_dim, self.num_heads = embed_dim, opts.num_heads
        self.sub_dim = embed_dim // opts.num_heads
        self.num_experts = opts.num_experts
        self.experts = ExpertPool(opts.num_experts, self.sub_dim, opts.bottleneck, opts.scale, opts.dropout)
        self.router = self.make_router() if opts.router == "shared" else None
        self.merge = nn.Linear(embed_dim, embed_dim) if opts.merge_proj else None
        if self.merge is not None:
            nn.init.zeros_(self.merge.bias)  # zero experts -> zero output at init, with the projection too

    def make_router(self) -> CosineRouter:
        o = self.opts
        return CosineRouter(self.sub_dim, o.num_experts, o.router_dim, o.temperature_init, o.temperature_min,
                            o.learnable_temperature)

    def forward(self, x: torch.Tensor, router: CosineRouter | None = None) -> SMoAOutput:
        """Split every token into sub-tokens, route each to its top-1 expert, merge back (B, T, D)."""
        router = router if router is not None else self.router
        if router is None:
            raise ValueError("router: per_block needs the block's router passed to SMoA.forward")
        B, T, D = x.shape
        sub = x.reshape(B * T * self.num_heads, self.sub_dim)
        probs = router(sub).float().softmax(dim=-1)
        idx = probs.argmax(dim=-1)
        gate = probs.gather(1, idx.unsqueeze(1)).squeeze(1).to(x.dtype)
        out = self.experts(sub, idx, gate).reshape(B, T, D)
        if self.merge is not None:
            out = self.merge(out)
        return SMoAOutput(out, probs, idx.view(B, T, self.num_heads))


def switch_balance_loss(probs: torch.Tensor, idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch Transformer load balancing: ``E * sum_e f_e * P_e`` with f_e the fraction of rows sent to e and
    P_e the mean router probability of e (1.0 when perfectly balanced)."""
    idx = idx.reshape(-1)
    f = torch.bincount(idx, minlength=num_experts).to(probs.dtype) / max(idx.numel(), 1)
    return num_experts * (f * probs.mean(dim=0)).sum()


class PromptGenerator(nn.Module):
    """P = gamma * mean over tokens(y) + beta (one token); ``gelu`` applies GELU before the mean (DAPT).

    ``beta`` starts small and random, not zero: the SMoA output is zero at init, and an all-zero prompt token has
    zero variance, so the next block's LayerNorm and the router's L2 normalisation divide by ~0 and the first
    step's gradient reached 5e10 on a random backbone.
    """

    def __init__(self, dim: int, gelu: bool = False) -> None:
        super().__init__()
        self.gelu = gelu
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.empty(dim))
        nn.init.trunc_normal_(self.beta, std=0.02)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.gelu:
            y = F.gelu(y)
        return (self.gamma * y.mean(dim=1) + self.beta).unsqueeze(1)


class SMoABlock(AuxLossMixin, nn.Module):
    """A block's handle on the shared SMoA (attached at ``block.mlp.peft_adapter``).

    Owns only block-specific parts (the router when ``router: per_block``, the prompt generator); the pool is held
    in a plain tuple, so it is neither registered twice nor saved twice. Records the last routing choices and
    accumulated expert counts for :func:`pointpeft.peft.adapterx.expert_usage`.
    """

    _TRANSIENT = ("_aux", "_last_output")

    def __init__(self, pool: SMoA, block_index: int, opts: XOptions, prompt: bool | None = None) -> None:
        super().__init__()
        self._pool = (pool,)
        self.block_index = block_index
        self.balance_loss_weight = float(opts.balance_loss_weight)
        self.router = pool.make_router() if opts.router == "per_block" else None
        use_pg = opts.prompt_generator if prompt is None else prompt
        self.prompt_generator = PromptGenerator(pool.embed_dim, opts.pg_gelu) if use_pg else None
        self.last_choice: torch.Tensor | None = None
        self.usage_counts = torch.zeros(pool.num_experts, dtype=torch.long)
        self._aux: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None

    @property
    def pool(self) -> SMoA:
        return self._pool[0]

    @property
    def active_router(self) -> CosineRouter:
        return self.router if self.router is not None else self.pool.router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.pool(x, self.active_router)
        choice = res.choice.detach()
        self.last_choice = choice
        counts = torch.bincount(choice.reshape(-1), minlength=self.pool.num_experts)
        self.usage_counts = self.usage_counts.to(counts.device) + counts
        self._aux = None
        if self.training and self.balance_loss_weight > 0 and torch.is_grad_enabled():
            loss = switch_balance_loss(res.probs, choice, self.pool.num_experts)
            self._aux = self.balance_loss_weight * loss
        self._last_output = res.out if self.prompt_generator is not None else None
        return res.out

    def make_prompt(self) -> torch.Tensor:
        """The block's prompt token (B, 1, D) from the SMoA output of its last forward."""
        if self._last_output is None or self.prompt_generator is None:
            raise RuntimeError(f"block {self.block_index}: no SMoA output to generate a prompt from")
        prompt = self.prompt_generator(self._last_output)
        self._last_output = None
        return prompt

    def append_prompt(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Block forward hook: append this block's prompt token at the end of the sequence."""
        return torch.cat([output, self.make_prompt().to(output.dtype)], dim=1)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {"balance_loss": self._aux} if self._aux is not None else {}

    def reset_usage(self) -> None:
        self.usage_counts = torch.zeros_like(self.usage_counts)
        self.last_choice = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for k in self._TRANSIENT:  # tensors holding an autograd graph cannot be copied or pickled
            state[k] = None
        return state

    def extra_repr(self) -> str:
        return f"block_index={self.block_index}, router={'own' if self.router is not None else 'shared'}"
