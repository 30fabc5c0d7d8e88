#!/usr/bin/env python
"""Test a trained run: overall and mean-class accuracy, confusion matrix, optional fixed K-vote.

    python tools/test.py experiments/adapterx/modelnet40/run1 --votes 10
    python tools/test.py --config cfgs/finetune/modelnet40/adapterx.yaml --ckpt pretrain.pth --adapter run1/best
"""

import sys

from pointpeft.cli import test_main

if __name__ == "__main__":
    sys.exit(test_main())
