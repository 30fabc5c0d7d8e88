#!/usr/bin/env python
"""Fine-tune (or train) a model from a config, as Point-MAE/DAPT users do:

    python tools/train.py --config cfgs/finetune/modelnet40/adapterx.yaml --ckpt pretrain.pth --exp-name run1
    python tools/train.py --resume experiments/adapterx/modelnet40/run1
    torchrun --nproc_per_node 2 tools/train.py --config ... --ckpt ...

Dotted overrides follow the options: ``peft.num_experts=8 optimizer.lr=1e-3``.
"""

import sys

from pointpeft.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
