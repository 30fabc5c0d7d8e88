"""Reading torch.profiler traces: backward nodes that reach the frozen encoder, and the costliest ops."""

from __future__ import annotations

from typing import Any


def encoder_backward_check(prof: Any, point_rows: int, groups: int, widths: set[int]) -> dict[str, Any]:
    """Backward nodes whose kernels touch the encoder's per-point tensors: (B*G*M, C) rows or (B*G, M, C) with C
    one of the encoder's widths. Autograd nodes show up as ``autograd::engine::evaluate_function: XBackward0``
    events; their kernels are children. Zero nodes = backward stops before the encoder.
    """

    def per_point(shape: Any) -> bool:
        if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(d, int) for d in shape):
            return False
        if len(shape) == 2:
            return shape[0] == point_rows and shape[1] in widths
        return len(shape) == 3 and shape[0] == groups and shape[0] * shape[1] == point_rows and shape[2] in widths

    nodes, total_us, backward_us = set(), 0.0, 0.0
    for evt in prof.events():
        if not evt.name.startswith("autograd::engine::evaluate_function:"):
            continue
        backward_us += evt.cpu_time_total
        stack, hit = list(evt.cpu_children), False
        while stack and not hit:
            child = stack.pop()
            hit = any(per_point(s) for s in (child.input_shapes or []))
            stack.extend(child.cpu_children)
        if hit:
            nodes.add(evt.name.removeprefix("autograd::engine::evaluate_function:").strip())
            total_us += evt.cpu_time_total
    return {"encoder_backward_nodes": sorted(nodes), "encoder_backward_ms": round(total_us / 1000, 2),
            "backward_ms": round(backward_us / 1000, 2)}


def top_ops(prof: Any, n: int = 8) -> list[dict[str, Any]]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count} for e in rows]
