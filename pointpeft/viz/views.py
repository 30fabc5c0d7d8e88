"""What the figures show, computed from models and clouds: FPS patches, Adapter-X routing per patch, MAE
reconstructions and predictions. Each function returns :class:`~pointpeft.viz.render.Panel` objects (plus a
legend where colours carry meaning), so the colours a test checks are exactly the colours that get drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pointpeft.errors import InputError
from pointpeft.viz.colors import UNASSIGNED, categorical_colors, label_colors
from pointpeft.viz.render import Panel

Legend = list[tuple[str, tuple[float, float, float]]]

CENTRE_COLOR = (0.85, 0.1, 0.1)
CONTEXT_COLOR = (0.72, 0.74, 0.78)
RECON_COLOR = (0.95, 0.5, 0.05)
VISIBLE_COLOR = (0.2, 0.4, 0.75)


def _as_cloud(points: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 3) or (1, N, 3) -> float32 tensor (1, N, 3)."""
    t = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points).float()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] != 1 or t.shape[-1] < 3:
        raise InputError(f"expected one cloud (N, 3) or (1, N, 3), got shape {tuple(t.shape)}")
    return t[..., :3].contiguous()


# -- patches ---------------------------------------------------------------------------------------------------

@dataclass
class Patches:
    """FPS patches of one cloud: ``centers`` (G, 3), ``members`` (G, M) point indices of each patch (the kNN of
    its centre), ``point_group`` (N,) the patch a point is drawn in (-1: in none) — of the patches holding a point,
    the one with the nearest centre."""

    points: np.ndarray
    centers: np.ndarray
    members: np.ndarray
    point_group: np.ndarray

    @property
    def num_group(self) -> int:
        return len(self.centers)


def assign_points(points: torch.Tensor, centers: torch.Tensor, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(members (G, M), point_group (N,)) for one cloud (1, N, 3) and its patch centres (1, G, 3)."""
    from pointpeft.ops import knn_query

    members = knn_query(group_size, points, centers)[0]  # (G, M), the same kNN the tokenizer uses
    n, g = points.shape[1], centers.shape[1]
    d2 = ((points[0, :, None, :] - centers[0, None, :, :]) ** 2).sum(-1)  # (N, G)
    inside = torch.zeros(n, g, dtype=torch.bool)
    inside[members.reshape(-1), torch.arange(g).repeat_interleave(members.shape[1])] = True
    d2 = torch.where(inside, d2, torch.full_like(d2, float("inf")))
    best = d2.argmin(dim=1)
    point_group = torch.where(inside.any(dim=1), best, torch.full_like(best, -1))
    return members.numpy(), point_group.numpy()


def compute_patches(points: np.ndarray | torch.Tensor, group: nn.Module) -> Patches:
    """Run a :class:`pointpeft.models.tokenizer.Group` on one cloud and record which points form each patch."""
    pts = _as_cloud(points)
    with torch.no_grad():
        _, center = group(pts)
    members, point_group = assign_points(pts, center, int(group.group_size))
    return Patches(pts[0].numpy(), center[0].numpy(), members, point_group)


def _centre_markers(centers: np.ndarray, radius: float, per_centre: int = 24, seed: int = 0) -> np.ndarray:
    """Small balls of points around each centre, so centres show at any point size and in both renderers."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(len(centers), per_centre, 3))
    d *= radius * rng.random((len(centers), per_centre, 1)) ** (1 / 3) / np.linalg.norm(d, axis=-1, keepdims=True)
    return (centers[:, None, :] + d).reshape(-1, 3)


def group_panels(patches: Patches, title: str = "") -> list[Panel]:
    """[cloud with its FPS centres marked, every patch in its own colour (points in no patch grey)]."""
    pts = patches.points
    radius = 0.012 * float(np.linalg.norm(pts.max(0) - pts.min(0)))
    marks = _centre_markers(patches.centers, radius)
    base = np.tile(CONTEXT_COLOR, (len(pts), 1))
    centre_panel = Panel(np.concatenate([pts, marks]),
                         np.concatenate([base, np.tile(CENTRE_COLOR, (len(marks), 1))]),
                         f"{title + ': ' if title else ''}{patches.num_group} FPS centres")
    colors = label_colors(patches.point_group, patches.num_group)
    patch_panel = Panel(pts, colors, f"{patches.num_group} patches x {patches.members.shape[1]} points (kNN)")
    return [centre_panel, patch_panel]


# -- Adapter-X routing -----------------------------------------------------------------------------------------

def patch_experts(choices: torch.Tensor | np.ndarray, num_group: int, num_experts: int,
                  head: int | None = None) -> np.ndarray:
    """Expert per patch (G,) from one sample's routing choices (T, heads): token 0 is CLS, tokens 1..G the patches
    (prompts after them are ignored). ``head`` picks one sub-token head; None takes the majority over heads (ties
    go to the lower expert index)."""
    c = torch.as_tensor(np.asarray(choices) if not isinstance(choices, torch.Tensor) else choices).long().cpu()
    if c.dim() != 2:
        raise InputError(f"routing choices of one sample must be (tokens, heads), got shape {tuple(c.shape)}")
    if c.shape[0] < 1 + num_group:
        raise InputError(f"routing choices cover {c.shape[0]} tokens; need 1 (CLS) + {num_group} patches")
    patch = c[1 : 1 + num_group]  # (G, heads)
    if head is not None:
        if not 0 <= head < patch.shape[1]:
            raise InputError(f"head {head} out of range: the SMoA splits tokens into {patch.shape[1]} heads")
        return patch[:, head].numpy()
    counts = torch.zeros(num_group, num_experts, dtype=torch.long)
    counts.scatter_add_(1, patch, torch.ones_like(patch))
    return counts.argmax(dim=1).numpy()  # argmax returns the first maximum: ties -> lower expert index


def expert_palette(num_experts: int) -> np.ndarray:
    """The colour of each expert (E, 3)."""
    return categorical_colors(num_experts)


def routing_point_colors(choices: torch.Tensor | np.ndarray, point_group: np.ndarray, num_group: int,
                         num_experts: int, head: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(colours (N, 3), expert per patch (G,)): each point takes the colour of the expert its patch was routed to;
    points in no patch are grey. ``choices`` is one sample's (T, heads) from ``routing_choices(model)[block][b]``."""
    experts = patch_experts(choices, num_group, num_experts, head)
    palette = np.concatenate([expert_palette(num_experts), UNASSIGNED[None]], axis=0)
    pg = np.asarray(point_group)
    per_point = np.where(pg >= 0, experts[np.clip(pg, 0, None)], num_experts)
    return palette[per_point], experts


@dataclass
class Routing:
    """Routing of one cloud through an Adapter-X model: its patches and the choices of every block (T, heads)."""

    patches: Patches
    choices: dict[int, torch.Tensor]
    num_experts: int
    logits: torch.Tensor


def _num_experts(model: nn.Module) -> int:
    from pointpeft.peft.adapterx import smoa_blocks

    return int(smoa_blocks(model)[0].pool.num_experts)


def capture_routing(model: nn.Module, points: np.ndarray | torch.Tensor) -> Routing:
    """Run ``model`` (eval, no grad) on one cloud and read the expert chosen for every patch in every block.

    The patch centres are taken from the model's own tokenizer during this forward (a hook on
    ``group_divider``), so patch k of the figure is token 1 + k of the router."""
    from pointpeft.peft import unwrap
    from pointpeft.peft.adapterx import routing_choices

    base = unwrap(model)
    group = getattr(base, "group_divider", None)
    if group is None:
        raise InputError(f"routing views need a point transformer (a model with group_divider), "
                         f"got {type(base).__name__}")
    num_experts = _num_experts(model)  # raises when the model has no SMoA
    pts = _as_cloud(points)
    seen: list[torch.Tensor] = []

    def _grab(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        seen.append(output[1].detach())

    handle = group.register_forward_hook(_grab)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(pts)
    finally:
        handle.remove()
        model.train(was_training)
    members, point_group = assign_points(pts, seen[-1], int(group.group_size))
    patches = Patches(pts[0].numpy(), seen[-1][0].numpy(), members, point_group)
    choices = {b: c[0].cpu() for b, c in routing_choices(model).items()}
    return Routing(patches, choices, num_experts, logits[0].detach())


def routing_panels(routing: Routing, blocks: list[int] | None = None, head: int | None = None,
                   title: str = "") -> tuple[list[Panel], Legend]:
    """One panel per block (default: every block), patches coloured by their expert, and a legend of the experts
    that appear (plus the grey of points that fall in no patch)."""
    available = sorted(routing.choices)
    blocks = available if blocks is None else blocks
    for b in blocks:
        if b not in routing.choices:
            raise InputError(f"block {b} has no routing choices; blocks with an SMoA: {available}")
    panels, used = [], set()
    for b in blocks:
        colors, experts = routing_point_colors(routing.choices[b], routing.patches.point_group,
                                               routing.patches.num_group, routing.num_experts, head)
        used.update(int(e) for e in experts)
        who = f"head {head}" if head is not None else "heads' majority"
        panels.append(Panel(routing.patches.points, colors,
                            f"{title + ' ' if title else ''}block {b}, {who}: {_experts(len(np.unique(experts)))}"))
    palette = expert_palette(routing.num_experts)
    legend: Legend = [(f"expert {e}", tuple(palette[e])) for e in sorted(used)]
    if (routing.patches.point_group < 0).any():
        legend.append(("in no patch", tuple(UNASSIGNED)))
    return panels, legend


def _experts(n: int) -> str:
    return f"{n} expert" if n == 1 else f"{n} experts"


# -- MAE reconstruction ----------------------------------------------------------------------------------------

def recon_panels(model: nn.Module, points: np.ndarray | torch.Tensor, seed: int = 0) -> tuple[list[Panel], Legend]:
    """[input, visible patches (the masked input), visible + reconstructed hidden patches] from a Point-MAE
    pretraining model's ``reconstruct``; reconstructed points are drawn in orange."""
    if not hasattr(model, "reconstruct"):
        raise InputError(f"recon needs a Point-MAE pretraining model with reconstruct(), got {type(model).__name__}")
    pts = _as_cloud(points)
    was_training = model.training
    model.eval()
    try:
        inp, visible, full = model.reconstruct(pts, generator=torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
    inp, visible, full = (t[0].detach().cpu().numpy() for t in (inp, visible, full))
    n_vis = len(visible)
    colors = np.concatenate([np.tile(VISIBLE_COLOR, (n_vis, 1)), np.tile(RECON_COLOR, (len(full) - n_vis, 1))])
    hidden = 1.0 - n_vis / max(len(full), 1)
    panels = [Panel(inp, np.tile(VISIBLE_COLOR, (len(inp), 1)), f"input ({len(inp)} points)"),
              Panel(visible, np.tile(VISIBLE_COLOR, (n_vis, 1)), f"visible patches ({hidden:.0%} masked)"),
              Panel(full, colors, "reconstruction")]
    legend: Legend = [("visible", VISIBLE_COLOR), ("reconstructed", RECON_COLOR)]
    return panels, legend


# -- predictions -----------------------------------------------------------------------------------------------

RIGHT_COLOR = (0.05, 0.55, 0.15)
WRONG_COLOR = (0.8, 0.1, 0.1)


@torch.no_grad()
def predict(model: nn.Module, clouds: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Predicted class per cloud (B,) with the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = [model(clouds[s : s + batch_size]).argmax(dim=-1) for s in range(0, len(clouds), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().numpy()


def prediction_panels(clouds: np.ndarray | torch.Tensor, labels: np.ndarray, preds: np.ndarray,
                      classes: list[str] | None = None) -> list[Panel]:
    """One panel per cloud titled 'true / predicted', green when right and red when wrong."""
    def name(i: int) -> str:
        return classes[i] if classes is not None and 0 <= i < len(classes) else str(i)

    panels = []
    for pts, y, p in zip(np.asarray(clouds), np.asarray(labels), np.asarray(preds)):
        ok = int(y) == int(p)
        panels.append(Panel(np.asarray(pts)[:, :3], None, f"{name(int(y))} / {name(int(p))}",
                            RIGHT_COLOR if ok else WRONG_COLOR))
    return panels
