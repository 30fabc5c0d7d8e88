"""Point-MAE / Point-BERT tokenizer: FPS centres + kNN patches (``Group``) and the mini-PointNet (``Encoder``).

Parameter names and shapes are the official ones (``first_conv.{0,1,3}``, ``second_conv.{0,1,3}``) so released
checkpoints load unchanged; the 1x1 convolutions are computed as GEMMs on channels-last rows, rearranged to skip
work (see :class:`Encoder`), with the same numbers up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pointpeft.errors import InputError
from pointpeft.models.batchnorm import WarmStartBatchNorm1d, warm_start_momentum
from pointpeft.ops import farthest_point_sample, gather_points, knn_query


def check_points(pts: torch.Tensor, min_points: int, name: str = "points") -> None:
    """Raise InputError unless ``pts`` is a finite float tensor (B, N, 3) with N >= min_points."""
    if not isinstance(pts, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor of shape (B, N, 3), got {type(pts).__name__}")
    if pts.dim() != 3 or pts.shape[-1] != 3:
        raise InputError(f"{name}: expected shape (B, N, 3), got {tuple(pts.shape)}")
    if not pts.is_floating_point():
        raise InputError(f"{name}: expected a float tensor, got dtype {pts.dtype}")
    if pts.shape[0] == 0:
        raise InputError(f"{name}: empty batch (B=0)")
    if pts.shape[1] < min_points:
        raise InputError(
            f"{name}: each cloud needs at least {min_points} points (num_group / group_size), got N={pts.shape[1]}"
        )
    bad = ~torch.isfinite(pts).all(dim=-1)
    if bad.any():
        b, n = (int(v) for v in bad.nonzero()[0])
        raise InputError(f"{name}: NaN or inf at cloud {b}, point {n} ({int(bad.sum())} bad points in the batch)")


def as_param_dtype(pts: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A float cloud in the dtype of ``module``'s parameters (float64 data into a float32 model works).

    Anything else (an int tensor, a non-tensor) is returned unchanged so :func:`check_points` reports it.
    """
    if not isinstance(pts, torch.Tensor) or not pts.is_floating_point():
        return pts
    ref = next(module.parameters(), None)
    return pts if ref is None or pts.dtype == ref.dtype else pts.to(ref.dtype)


class Group(nn.Module):
    """Split each cloud into ``num_group`` patches of ``group_size`` points, centred on their FPS centre."""

    def __init__(self, num_group: int, group_size: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size
        self.backend = backend

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz (B, N, 3) -> neighborhood (B, G, M, 3) centred, center (B, G, 3)."""
        check_points(xyz, max(self.num_group, self.group_size), "points")
        xyz = xyz.contiguous()
        center_idx = farthest_point_sample(xyz, self.num_group, backend=self.backend)
        center = gather_points(xyz, center_idx)
        idx = knn_query(self.group_size, xyz, center)
        neighborhood = gather_points(xyz, idx) - center.unsqueeze(2)
        return neighborhood, center

    def extra_repr(self) -> str:
        return f"num_group={self.num_group}, group_size={self.group_size}, backend={self.backend!r}"


def _bn_fold(conv: nn.Conv1d, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one affine map; valid while ``bn`` uses running statistics.

    Differentiable in the conv/BN parameters, so it is also used when they train with the BN in eval mode.
    """
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight.squeeze(-1) * scale.unsqueeze(-1)
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight, bias


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    """Max over dim 1. ``amax`` is faster without autograd; with it, ``max`` has the cheaper backward (a scatter
    to the arg-max instead of amax's equality mask over the whole input)."""
    return x.max(dim=1).values if x.requires_grad else x.amax(dim=1)


def _uses_batch_stats(bn: nn.BatchNorm1d) -> bool:
    return bn.training or bn.running_mean is None


def _linear_bn_relu(x: torch.Tensor, conv: nn.Conv1d, bn: nn.BatchNorm1d) -> torch.Tensor:
    """relu(bn(conv(x))) on rows ``x`` (n, C_in): the BN is folded into the GEMM unless it needs batch statistics."""
    if _uses_batch_stats(bn):
        h = F.batch_norm(F.linear(x, conv.weight.squeeze(-1), conv.bias), bn.running_mean, bn.running_var,
                         bn.weight, bn.bias, True, _bn_momentum(bn), bn.eps)
        _count_batch(bn)
    else:
        h = F.linear(x, *_bn_fold(conv, bn))
    return h.relu_()


def _bn_momentum(bn: nn.BatchNorm1d) -> float:
    return warm_start_momentum(bn)  # see pointpeft.models.batchnorm: statistics start from the data


def _count_batch(bn: nn.BatchNorm1d) -> None:
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)


class Encoder(nn.Module):
    """Mini-PointNet: shared MLP, max-pool, concat the global feature, shared MLP, max-pool -> one token a patch.

    Computed as GEMMs on channels-last rows with the same numbers as the official Conv1d stack (up to float
    rounding), rearranged to skip work (profiled on CPU, B=32 x 64 groups x 32 points = 65,536 rows):

    * ``second_conv.0`` acts on ``cat([global, local])``; its weight is split so the global half is applied once per
      group (G rows) instead of once per point, and the (rows, 512) concat is never built (-26% of the FLOPs);
    * biases that feed a max-pool are added after the max (exact: adding a constant keeps the maximum);
    * a BatchNorm using running statistics (eval mode, or frozen by a PEFT method) is folded into its GEMM;
    * ReLUs run in place;
    * without autograd and batch statistics (inference, or frozen by a PEFT method) the groups go through in chunks
      of ``chunk_groups``: same speed, and the transient memory drops from ~300 MiB to ~70 MiB at B=32 x 64 x 32
      (Point-MAE), which was the peak of a frozen-backbone training step.
    """

    #: Groups per chunk when nothing needs autograd or batch statistics (0: never chunk).
    chunk_groups: int = 256

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), WarmStartBatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), WarmStartBatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, encoder_channel, 1)
        )

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        """point_groups (B, G, M, 3) -> tokens (B, G, encoder_channel)."""
        B, G, M, _ = point_groups.shape
        chunk = self.chunk_groups
        if 0 < chunk < B * G and not self._needs_full_batch():
            flat = point_groups.reshape(B * G, 1, M, 3)
            return torch.cat([self._forward(c) for c in flat.split(chunk)]).reshape(B, G, self.encoder_channel)
        return self._forward(point_groups)

    def _needs_full_batch(self) -> bool:
        """Autograd or BatchNorm batch statistics couple the groups; otherwise each group is independent."""
        if _uses_batch_stats(self.first_conv[1]) or _uses_batch_stats(self.second_conv[1]):
            return True
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        B, G, M, _ = point_groups.shape
        f1, b1, _, f2 = self.first_conv
        s1, b2, _, s2 = self.second_conv
        half = f2.out_channels  # width of the local feature (256); the global feature has the same width
        h = _linear_bn_relu(point_groups.reshape(B * G * M, 3), f1, b1)  # (BGM, 128)
        local = F.linear(h, f2.weight.squeeze(-1))  # (BGM, 256), f2's bias folded below
        glob = _max_pool(local.view(B * G, M, half)) + f2.bias  # (BG, 256) = max-pool of conv(x) + bias
        w_glob, w_local = s1.weight.squeeze(-1).split([half, half], dim=1)
        if _uses_batch_stats(b2):
            w_l, w_g, bias = w_local, w_glob, s1.bias
        else:
            w_all, bias = _bn_fold(s1, b2)
            w_g, w_l = w_all.split([half, half], dim=1)
        # s1(cat[glob, local + f2.bias]) = local @ w_l^T + (glob @ w_g^T + f2.bias @ w_l^T + bias)
        per_group = F.linear(glob, w_g, torch.addmv(bias, w_l, f2.bias))  # (BG, 512)
        # In place on the GEMM's own (3-D) output, not on a view of it: autograd would clone it in backward.
        pre = F.linear(local.view(B * G, M, half), w_l)  # (BG, M, 512)
        pre = pre.add_(per_group.unsqueeze(1).to(pre.dtype)).view(B * G * M, -1)
        if _uses_batch_stats(b2):
            pre = F.batch_norm(pre, b2.running_mean, b2.running_var, b2.weight, b2.bias, True, _bn_momentum(b2),
                               b2.eps)
            _count_batch(b2)
        h = pre.relu_()
        out = _max_pool(F.linear(h, s2.weight.squeeze(-1)).view(B * G, M, -1)) + s2.bias
        return out.reshape(B, G, self.encoder_channel)
