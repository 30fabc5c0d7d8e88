#!/usr/bin/env python
"""Look at point clouds, patches, Adapter-X routing, MAE reconstructions, predictions and run charts
(``pointpeft/viz/cli.py`` documents the modes; ``pointpeft-visualize`` is the installed command):

    python tools/visualize.py cloud --file bathtub_0001.off --out bathtub.png
    python tools/visualize.py routing --config run.yaml --ckpt pretrain.pth --adapter run/adapter --out routing.png
    python tools/visualize.py plot curves --results run/results.json --out curves.png
"""

import sys

from pointpeft.viz.cli import build_model_from_args, build_parser, main

__all__ = ["build_model_from_args", "build_parser", "main"]  # the tests drive the tool through these

if __name__ == "__main__":
    sys.exit(main())
