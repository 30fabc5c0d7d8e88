#!/usr/bin/env python
"""Few-shot ModelNet40 (N-way K-shot, 10 folds, mean ± std), as Point-MAE / Point-BERT / IDPT report it:

    python tools/fewshot.py --config cfgs/fewshot/adapterx.yaml --ckpt pretrain.pth --way 5 10 --shot 10 20 \\
        --folds 0-9 --jobs 2
    python tools/fewshot.py --config cfgs/fewshot/mhr.yaml --ckpt pretrain.pth --protocol mhr

Runs go to experiments/fewshot/<method>/<way>w<shot>s/fold<k>/; rerunning the command resumes. See docs/fewshot.md.
"""

import sys

from pointpeft.cli import fewshot_main

if __name__ == "__main__":
    sys.exit(fewshot_main())
