"""BatchNorm whose running statistics start from the data, not from (mean 0, var 1).

``nn.BatchNorm1d`` with momentum 0.1 keeps 0.9^n of its initial variance of 1 after n batches. Point-MAE's patch
features have a variance of ~1e-5 (patches are a few hundredths wide), so after 40 steps the running variance was
still ~0.02, 2000x too large: in eval mode every cloud gave the same tokens and the model predicted one class,
while training accuracy rose (seen in short runs and few-shot folds). Here the exponential average is
bias-corrected, as Adam corrects its moments: the update factor for the (n+1)-th batch is
``momentum / (1 - (1 - momentum)^(n+1))`` (1 for the first batch, which replaces the initial values, then
0.53, 0.37, ... down to ``momentum``), so the running statistics are the usual exponentially weighted average of the
batches seen, without the initial (0, 1). Modules loaded with a trained ``num_batches_tracked`` (n >= ~100) behave
exactly like ``nn.BatchNorm1d``; state-dict keys are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def warm_start_momentum(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The running-statistics update factor for the next training batch of ``bn``."""
    n = int(bn.num_batches_tracked) if bn.num_batches_tracked is not None else 0
    if bn.momentum is None:  # nn.BatchNorm's cumulative average
        return 1.0 / (n + 1)
    m = float(bn.momentum)
    if n > 200 or m >= 1.0:
        return m
    return m / (1.0 - (1.0 - m) ** (n + 1))


class WarmStartBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with :func:`warm_start_momentum` (same parameters, buffers and eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.running_mean is not None):
            return super().forward(x)
        self._check_input_dim(x)
        factor = warm_start_momentum(self)
        self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, factor, self.eps)
