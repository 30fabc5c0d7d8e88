"""One training configuration as the trainer runs it (model, AdamW, forward + losses, backward, step), its
phases and the activations autograd saves for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.memory import MIB
from benchmarks.precision import autocast, precision_dtype
from benchmarks.timing import Stats


def make_inputs(batch: int, npoints: int, num_classes: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, npoints, 3, generator=gen) * 2 - 1
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return x.to(device), y.to(device)


def build_peft(model_name: str, method: str, device: torch.device, num_classes: int = 40,
               peft_overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """A point transformer with ``method`` applied (``backbone``: none), its config's defaults plus ``peft_overrides``."""
    from pointpeft.models import build_point_transformer
    from pointpeft.peft import get_peft_model

    model = build_point_transformer(model_name, num_classes=num_classes)
    if method != "backbone":
        model = get_peft_model(model, {"type": method, **(peft_overrides or {})})
    return model.to(device)


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                           device: torch.device) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for backward in one training forward."""
    from pointpeft.peft import training_forward

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        training_forward(model, x)
    return sum(seen.values())


class PhaseClock:
    """Wall-clock phases of one training step from forward hooks: tokenizer, blocks, head, backward, optimizer."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.t: dict[str, float] = {}
        self.device = device
        inner = model
        self.handles = [
            inner.register_forward_pre_hook(self._mark("start")),
            inner.blocks.register_forward_pre_hook(self._mark("blocks_in")),
            inner.blocks.register_forward_hook(self._mark_post("blocks_out")),
            inner.register_forward_hook(self._mark_post("forward_out")),
        ]

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _mark(self, name: str) -> Callable:
        def hook(module: Any, args: Any) -> None:
            self.t[name] = self._now()
        return hook

    def _mark_post(self, name: str) -> Callable:
        def hook(module: Any, args: Any, out: Any) -> None:
            self.t[name] = self._now()
        return hook

    def mark(self, name: str) -> None:
        self.t[name] = self._now()

    def phases_ms(self) -> dict[str, float]:
        t = self.t
        keys = [("tokenizer", "start", "blocks_in"), ("blocks_forward", "blocks_in", "blocks_out"),
                ("head_forward", "blocks_out", "forward_out"), ("loss", "forward_out", "loss"),
                ("backward", "loss", "backward"), ("optimizer", "backward", "optimizer")]
        return {k: round(1000 * (t[b] - t[a]), 2) for k, a, b in keys if a in t and b in t}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class TrainStep:
    """One training configuration: model, AdamW over the trainable parameters, and the step itself
    (zero_grad, forward + task loss + weighted aux losses via ``training_forward``, backward, optimizer step)."""

    def __init__(self, model_name: str, method: str, precision: str, device: torch.device, batch: int,
                 npoints: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.x, self.y = make_inputs(batch, npoints, 40, device, seed)
        self.dtype = precision_dtype(precision, device)
        self.model = build_peft(model_name, method, device).train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=5e-4,
                                     weight_decay=0.05)
        self.clock: PhaseClock | None = None

    @property
    def amp_dtype(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.dtype is not None else "float32"

    def __call__(self) -> None:
        from pointpeft.peft import training_forward

        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            logits, aux = training_forward(self.model, self.x)
            loss = F.cross_entropy(logits.float(), self.y)
            if aux:
                loss = loss + sum(aux.values())
        if self.clock is not None:
            self.clock.mark("loss")
        loss.backward()
        if self.clock is not None:
            self.clock.mark("backward")
        self.opt.step()
        if self.clock is not None:
            self.clock.mark("optimizer")

    def phases(self, steps: int = 3) -> dict[str, float]:
        """Wall-clock phases of a step (ms), median over ``steps`` steps."""
        self.clock = PhaseClock(self.model, self.device)
        runs: list[dict[str, float]] = []
        try:
            for _ in range(steps):
                self()
                runs.append(self.clock.phases_ms())
        finally:
            self.clock.remove()
            self.clock = None
        return {k: round(Stats.of([r[k] for r in runs]).median, 2) for k in runs[0]}

    def saved_activations_mb(self) -> float:
        return round(saved_activation_bytes(self.model, self.x, self.dtype, self.device) / MIB, 1)
