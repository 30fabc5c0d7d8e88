#!/usr/bin/env python
"""Pretrain a Point-MAE masked autoencoder from a config (the config's ``train.task: mae_pretrain``):

    python tools/pretrain.py --config cfgs/pretrain/shapenet55.yaml --exp-name mae
    python tools/pretrain.py --config cfgs/pretrain/synthetic_small.yaml --exp-name mae   # CPU, embedded data
    python tools/pretrain.py --resume experiments/shapenet55/pretrain/mae
    torchrun --nproc_per_node 4 tools/pretrain.py --config cfgs/pretrain/shapenet55.yaml --exp-name mae

The run folder gets ``pretrain.pth`` (Point-MAE's ``{"base_model": ...}`` layout) at the end; fine-tune from it
with ``tools/train.py --config cfgs/finetune/... --ckpt <run folder>/pretrain.pth``. Dotted overrides follow the
options: ``model.mask_ratio=0.75 optimizer.lr=5e-4``.
"""

import sys

from pointpeft.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
