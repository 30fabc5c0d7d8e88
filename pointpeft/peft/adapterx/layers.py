"""Adapter-X layers: the shared Sparse Mixture of Adapters (SMoA), its X-MoE router, the prompt generator.

Class API (reused by DAPT-X and the ``x_mode`` of adapter/adaptformer):

* :class:`SMoA` — ONE per model (``model.peft_smoa``): an :class:`ExpertPool`, the shared :class:`CosineRouter`
  (``router: shared``) and the optional merge projection. ``SMoA(embed_dim, opts)`` with resolved
  :class:`~pointpeft.peft.adapterx.config.XOptions`; ``smoa(x, router=None) -> SMoAOutput``.
* :class:`SMoABlock` — one per transformer block: references the pool without registering it (so the pool's
  parameters are counted and saved once), owns the block's router when ``router: per_block`` and its
  :class:`PromptGenerator`; records routing choices / usage; produces the Switch load-balancing loss.
* :func:`switch_balance_loss` — ``E * sum_e f_e * P_e`` (Switch Transformer, eq. 4).

Dispatch (:class:`ExpertPool`): sub-tokens are sorted by their expert and every expert's rows are one group of a
grouped GEMM (``torch._grouped_mm`` over the (E, d, r) weights with int32 group offsets): one call for all down
projections, one for all up projections (the up bias rides along as an extra hidden column holding the gate), no
Python loop over experts and no host sync. Training runs it as one autograd node (:class:`_GroupedExperts`) that
saves only the block input (shared with the router's saved input), the r-wide pre-activation and the gate, and
recomputes the sorted copy and the GELU in backward. Where the grouped GEMM does not apply (float64, widths that are
not a multiple of 16 bytes, a device whose kernel refuses the dtype) the sorted per-expert loop runs instead
(``dispatch: loop``, also the reference the tests compare against). Measured on the AMD EPYC (AVX2) machine, 1
thread, experts only: 140 sub-tokens (batch 1) 0.45 ms grouped vs 1.28 ms loop; 4,864 (batch 32) equal;
benchmarks/README.md has the whole-model numbers.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.peft.adapterx.config import XOptions
from pointpeft.peft.aux_loss import AuxLossMixin
from pointpeft.utils.modules import TransientState

DISPATCH_MODES = ("auto", "grouped", "loop")
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_grouped_ok: dict[tuple[str, torch.dtype], bool] = {}  # (device type, dtype) -> the grouped GEMM ran and agreed


def grouped_mm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs on ``device`` in ``dtype`` and agrees with per-group matmuls (checked once
    per device type and dtype on a tiny case: CUDA kernels refuse some dtypes on some GPUs)."""
    key = (device.type, dtype)
    if key not in _grouped_ok:
        ok = False
        if dtype in _GROUPED_DTYPES and hasattr(torch, "_grouped_mm"):
            try:
                g = torch.Generator().manual_seed(0)
                a = torch.randn(12, 8, generator=g).to(device, dtype)
                w = torch.randn(3, 8, 4, generator=g).to(device, dtype)
                offs = torch.tensor([5, 5, 12], dtype=torch.int32, device=device)
                ref = torch.cat([a[:5] @ w[0], a[5:] @ w[2]])
                ok = bool(torch.allclose(torch._grouped_mm(a, w, offs=offs).float(), ref.float(), atol=1e-2))
                # the backward's form: groups along K (weight gradients), (8, 12) x (12, 4) -> (3, 8, 4)
                gw = torch._grouped_mm(a.t(), ref.contiguous(), offs=offs)
                ok = ok and bool(torch.allclose(gw[2].float(), (a[5:].t() @ ref[5:]).float(), atol=1e-1))
            except (RuntimeError, NotImplementedError, TypeError):
                ok = False
        _grouped_ok[key] = ok
    return _grouped_ok[key]


def _aligned(n: int, dtype: torch.dtype) -> bool:
    """Grouped-GEMM operands need row strides that are a multiple of 16 bytes."""
    return (n * torch.empty((), dtype=dtype).element_size()) % 16 == 0


def _round_up(n: int, dtype: torch.dtype) -> int:
    step = 16 // torch.empty((), dtype=dtype).element_size()
    return -(-n // step) * step


def _grouped_forward(x: torch.Tensor, order: torch.Tensor, sidx: torch.Tensor, offs: torch.Tensor,
                     g: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor, wu_aug: torch.Tensor,
                     mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted rows -> grouped down GEMM -> GELU (x dropout mask) x gate -> grouped up GEMM (bias via the gate column)
    -> rows back in their original order. Returns (output (N, d), pre-activation (N, rp))."""
    a = torch._grouped_mm(x.index_select(0, order), wd, offs=offs)
    a += bd.index_select(0, sidx)
    hg = _gated_hidden(_masked_gelu(a, mask), g, wu_aug.shape[1])
    ys = torch._grouped_mm(hg, wu_aug, offs=offs)
    return torch.empty_like(ys).index_copy_(0, order, ys), a


def _masked_gelu(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    h = F.gelu(a)
    return h.mul_(mask) if mask is not None else h


def _gated_hidden(h: torch.Tensor, g: torch.Tensor, width: int) -> torch.Tensor:
    """[h * g, g, 0...] (N, width): the up GEMM's input; its gate column multiplies the up bias row."""
    n, rp = h.shape
    hg = h.new_zeros(n, width)
    torch.mul(h, g.unsqueeze(1), out=hg[:, :rp])
    hg[:, rp] = g
    return hg


class _GroupedExperts(torch.autograd.Function):
    """The grouped expert computation as one autograd node with a hand-written backward.

    Saved: the unsorted input (the same storage the router's projection saves), the pre-activation (N, rp), the gate,
    the order and offsets; the sorted copy of the input and the GELU are recomputed in backward, so no d-wide
    tensor is kept beyond the input itself (autograd kept three: the sorted input, the expert output for
    ``index_copy`` and the router's input).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: torch.Tensor, wd: torch.Tensor, bd: torch.Tensor,
                wu_aug: torch.Tensor, order: torch.Tensor, sidx: torch.Tensor, offs: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        out, a = _grouped_forward(x, order, sidx, offs, g, wd, bd, wu_aug, mask)
        ctx.save_for_backward(x, g, wd, wu_aug, order, sidx, offs, a, mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, g, wd, wu_aug, order, sidx, offs, a, mask = ctx.saved_tensors
        rp = a.shape[1]
        gy = grad_out.contiguous().index_select(0, order)  # (N, d), sorted like the rows
        h = _masked_gelu(a, mask)
        hg = _gated_hidden(h, g, wu_aug.shape[1])
        grad_wu = torch._grouped_mm(hg.t(), gy, offs=offs) if ctx.needs_input_grad[4] else None
        grad_hg = torch._grouped_mm(gy, wu_aug.transpose(1, 2), offs=offs)  # (N, width)
        grad_g = grad_hg[:, rp] + (grad_hg[:, :rp] * h).sum(1)
        grad_h = grad_hg[:, :rp] * g.unsqueeze(1)
        if mask is not None:
            grad_h *= mask
        grad_a = torch.ops.aten.gelu_backward(grad_h, a)
        grad_wd = grad_bd = None
        if ctx.needs_input_grad[2]:
            grad_wd = torch._grouped_mm(x.index_select(0, order).t(), grad_a, offs=offs)
        if ctx.needs_input_grad[3]:
            grad_bd = grad_a.new_zeros(wd.shape[0], rp).index_add_(0, sidx, grad_a)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gxs = torch._grouped_mm(grad_a, wd.transpose(1, 2), offs=offs)
            grad_x = torch.empty_like(gxs).index_copy_(0, order, gxs)
        return grad_x, grad_g if ctx.needs_input_grad[1] else None, grad_wd, grad_bd, grad_wu, None, None, None, None


class ExpertPool(nn.Module):
    """``num_experts`` bottleneck adapters (down d->r, GELU, dropout, up r->d; up zero-initialised) as batched weights.

    ``dispatch``: ``auto`` (grouped GEMM where it applies, else the loop), ``grouped`` (error where it does not
    apply) or ``loop`` (the sorted per-expert loop; the reference). Results agree to float rounding.
    """

    def __init__(self, num_experts: int, dim: int, bottleneck: int, scale: float = 1.0, dropout: float = 0.0,
                 dispatch: str = "auto") -> None:
        super().__init__()
        self.num_experts, self.dim, self.bottleneck, self.scale = num_experts, dim, bottleneck, float(scale)
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default range for the down projection
        self.w_down = nn.Parameter(torch.empty(num_experts, dim, bottleneck).uniform_(-bound, bound))
        self.b_down = nn.Parameter(torch.zeros(num_experts, bottleneck))
        self.w_up = nn.Parameter(torch.zeros(num_experts, bottleneck, dim))  # zero: no change at init
        self.b_up = nn.Parameter(torch.zeros(num_experts, dim))
        self.dropout = nn.Dropout(dropout)
        self.dispatch = dispatch
        self.last_counts: torch.Tensor | None = None  # rows per expert in the last forward (usage, balance loss)

    @property
    def dispatch(self) -> str:
        return self._dispatch

    @dispatch.setter
    def dispatch(self, mode: str) -> None:
        if mode not in DISPATCH_MODES:
            raise ValueError(f"ExpertPool.dispatch must be one of {list(DISPATCH_MODES)}, got {mode!r}")
        self._dispatch = mode

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on ``x`` (n, d), without scale or gate."""
        h = self.dropout(F.gelu(x @ self.w_down[e] + self.b_down[e]))
        return h @ self.w_up[e] + self.b_up[e]

    def uses_grouped(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` takes the grouped-GEMM path."""
        if self._dispatch == "loop":
            return False
        dtype = self.w_down.dtype
        ok = _aligned(self.dim, dtype) and grouped_mm_available(device, dtype)
        if not ok and self._dispatch == "grouped":
            raise RuntimeError(f"ExpertPool dispatch 'grouped' does not apply to dim={self.dim} in {dtype} on "
                               f"{device.type} (torch._grouped_mm missing, refused, or rows not 16-byte aligned)")
        return ok

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``scale * gate[n] * expert_{idx[n]}(x[n])`` for every row of ``x`` (N, d).

        Runs in the weights' dtype (float32; float64 in tests) with autocast off: under bf16 autocast oneDNN built a
        kernel for every new GEMM shape (340 us vs 25 us), which made a bf16 step 2-3x slower than fp32
        (benchmarks/README.md); the experts are ~1% of a step's FLOPs. The gate multiplies the r-wide hidden units
        (``g*(h W + b) = (g*h) W + g*b``), so no d-wide copy is kept for its gradient.
        """
        dtype, wdtype = x.dtype, self.w_down.dtype
        autocast_on = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
            x = x if dtype == wdtype else x.to(wdtype)  # no-op casts still cost a call each at batch 1
            g = gate if gate.dtype == wdtype else gate.to(wdtype)
            g = g * self.scale if self.scale != 1.0 else g
            counts = torch.bincount(idx, minlength=self.num_experts)
            self.last_counts = counts
            if x.shape[0] == 0:
                out = x.new_zeros(0, self.dim)
            elif self.uses_grouped(x.device):
                out = self._grouped(x, idx, g, counts)
            else:
                out = self._loop(x, idx, g, counts)
        return out if out.dtype == dtype else out.to(dtype)

    def _needs_grad(self, x: torch.Tensor, g: torch.Tensor | None = None) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or (g is not None and g.requires_grad) or any(
            p.requires_grad for p in (self.w_down, self.b_down, self.w_up, self.b_up)))

    def _packed_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w_down (E, d, rp), b_down (E, rp), w_up with the up bias as row rp (E, width, d)): the hidden width
        padded with zero units to 16-byte rows (gelu(0) = 0: they carry nothing)."""
        E, d, r = self.w_down.shape
        rp = _round_up(r, dtype)
        wd, bd = self.w_down, self.b_down
        pieces = [self.w_up]
        if rp != r:
            wd, bd = F.pad(wd, (0, rp - r)), F.pad(bd, (0, rp - r))
            pieces.append(self.w_up.new_zeros(E, rp - r, d))
        width = _round_up(rp + 1, dtype)
        pieces += [self.b_up.unsqueeze(1), self.w_up.new_zeros(E, width - rp - 1, d)]
        return wd, bd, torch.cat(pieces, 1)

    def _inference_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_packed_weights` built once and reused by every block until a weight changes (inference only:
        the parameters' version counters and storage are the key)."""
        key = tuple((p.data_ptr(), p._version) for p in (self.w_down, self.b_down, self.w_up, self.b_up))
        cached = self.__dict__.get("_packed_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self._packed_weights(dtype))
            self.__dict__["_packed_cache"] = cached
        return cached[1]

    def _grouped(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        order = idx.argsort()
        sidx = idx.index_select(0, order)
        offs = counts.cumsum(0, dtype=torch.int32)
        gs = g.index_select(0, order)
        needs_grad = self._needs_grad(x, g)
        wd, bd, wu_aug = self._packed_weights(x.dtype) if needs_grad else self._inference_weights(x.dtype)
        rp = wd.shape[-1]
        mask = None
        if self.training and self.dropout.p > 0:
            keep = 1.0 - self.dropout.p
            mask = torch.zeros(x.shape[0], rp, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
        if needs_grad:
            return _GroupedExperts.apply(x, gs, wd, bd, wu_aug, order, sidx, offs, mask)
        with torch.no_grad():  # inference: no autograd bookkeeping
            return _grouped_forward(x, order, sidx, offs, gs, wd, bd, wu_aug, mask)[0]

    def _loop(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The sorted per-expert loop (one host sync for the split sizes); the reference path."""
        order = idx.argsort()
        sizes = counts.tolist()
        xs = x.index_select(0, order).split(sizes)
        gs = g.index_select(0, order).unsqueeze(-1).split(sizes)
        ys = []
        for e, (c, ge) in enumerate(zip(xs, gs, strict=True)):
            if c.shape[0]:
                h = self.dropout(F.gelu(torch.addmm(self.b_down[e], c, self.w_down[e]))) * ge
                ys.append(torch.addmm(ge * self.b_up[e], h, self.w_up[e]))
        y = torch.cat(ys)
        return torch.empty_like(y).index_copy(0, order, y)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, dim={self.dim}, bottleneck={self.bottleneck}, scale={self.scale}, "
                f"dispatch={self._dispatch}")


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

    def expert_matrix(self) -> torch.Tensor:
        """(router_dim, E): the L2-normalised expert embeddings divided by the temperature, transposed."""
        emb = F.normalize(self.expert_embeddings, dim=-1)
        return emb.t() * self.log_inv_temperature.clamp(max=self.max_log_inv_t).exp()

    def _inference_matrix(self) -> torch.Tensor:
        """:meth:`expert_matrix` built once and reused by every block until a parameter changes (inference)."""
        key = tuple((p.data_ptr(), p._version) for p in (self.expert_embeddings, self.log_inv_temperature))
        cached = self.__dict__.get("_matrix_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.expert_matrix())
            self.__dict__["_matrix_cache"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routing logits (N, E) for sub-tokens (N, d): cosine similarity / temperature."""
        z = F.normalize(self.proj(x), dim=-1, eps=1e-6)  # a zero token must not make a 1e12 gradient
        grad = torch.is_grad_enabled() and (self.expert_embeddings.requires_grad
                                            or self.log_inv_temperature.requires_grad)
        return z @ (self.expert_matrix() if grad else self._inference_matrix())


def clear_inference_caches(module: nn.Module) -> None:
    """Drop the packed expert weights and router matrices cached for inference (rebuilt on the next forward)."""
    for m in module.modules():
        m.__dict__.pop("_packed_cache", None)
        m.__dict__.pop("_matrix_cache", None)


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
        logits = router(sub)
        probs = (logits if logits.dtype == torch.float32 else logits.float()).softmax(dim=-1)
        gate, idx = probs.max(dim=-1)  # top-1: the probability and the expert in one op (float32 gate)
        out = self.experts(sub, idx, gate).reshape(B, T, D)
        if self.merge is not None:
            out = self.merge(out)
        return SMoAOutput(out, probs, idx.view(B, T, self.num_heads))


def switch_balance_loss(probs: torch.Tensor, idx: torch.Tensor, num_experts: int,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load balancing: ``E * sum_e f_e * P_e`` with f_e the fraction of rows sent to e and
    P_e the mean router probability of e (1.0 when perfectly balanced). ``counts``: ``bincount(idx)`` when known."""
    idx = idx.reshape(-1)
    if counts is None:
        counts = torch.bincount(idx, minlength=num_experts)
    f = counts.to(probs.dtype) / max(idx.numel(), 1)
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


class SMoABlock(AuxLossMixin, TransientState, nn.Module):
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
        if self.block_index == 0:  # a new model forward: weights may have changed in ways version counters miss
            clear_inference_caches(self.pool)
        if self.router is not None:  # a block's own router runs once a forward: nothing to reuse
            clear_inference_caches(self.router)
        res = self.pool(x, self.active_router)
        choice = res.choice.detach()
        self.last_choice = choice
        counts = self.pool.experts.last_counts  # bincount of this forward's choices, made by the dispatch
        usage = self.usage_counts if self.usage_counts.device == counts.device else self.usage_counts.to(counts.device)
        self.usage_counts = usage + counts
        self._aux = None
        if self.training and self.balance_loss_weight > 0 and torch.is_grad_enabled():
            loss = switch_balance_loss(res.probs, choice, self.pool.num_experts, counts)
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
        prompt = self.make_prompt()
        return torch.cat([output, prompt if prompt.dtype == output.dtype else prompt.to(output.dtype)], dim=1)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        return {"balance_loss": self._aux} if self._aux is not None else {}

    def reset_usage(self) -> None:
        self.usage_counts = torch.zeros_like(self.usage_counts)
        self.last_choice = None


    def extra_repr(self) -> str:
        return f"block_index={self.block_index}, router={'own' if self.router is not None else 'shared'}"
