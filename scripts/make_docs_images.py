"""Regenerate the README's figures in docs/images/: ModelNet40 clouds, FPS patches, and Adapter-X routing.

Uses the real ModelNet40 (HDF5, 1024 points) when it is found (``--root``, else ../shared/data), the embedded
synthetic shapes otherwise. The routing view runs Point-MAE + Adapter-X; pass ``--ckpt``/``--adapter`` for a
trained model, otherwise the weights are random and the figure's title says so (it then shows what the view
looks like, not what a trained router learns).

    python scripts/make_docs_images.py                       # writes docs/images/{clouds,groups,routing}.png
    python scripts/make_docs_images.py --ckpt pretrain.pth --adapter runs/x/adapter --out docs/images
    python scripts/make_docs_images.py --run experiments/mn40-small/finetune/adapterx/seed0   # a trained run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pointpeft.data import build_dataset
from pointpeft.errors import PointPeftError
from pointpeft.utils.misc import get_logger, set_seed, setup_logging
from pointpeft.viz import views
from pointpeft.viz.camera import View
from pointpeft.viz.render import Panel, render_panels

ROOT = Path(__file__).resolve().parents[1]

log = get_logger("scripts.make_docs_images")
DEFAULT_ROOT = ROOT.parent / "shared" / "data" / "modelnet40_ply_hdf5_1024"
SHOWN = ("airplane", "chair", "guitar", "lamp")  # ModelNet40 classes in the cloud figure
ROUTED = "chair"


def load_examples(root: Path | None) -> tuple[dict[str, np.ndarray], str, str]:
    """({class: cloud (N, 3)}, source name, up axis) — the first test shape of each class in SHOWN."""
    if root is not None and (root / "test_files.txt").is_file():
        ds = build_dataset({"type": "modelnet40", "root": str(root), "split": "test"})
        out = {}
        for name in SHOWN:
            idx = int(np.nonzero(ds.labels == ds.classes.index(name))[0][0])
            out[name] = ds[idx][0].numpy()
        return out, "ModelNet40 test split", "z"
    log.warning("ModelNet40 not found at %s; drawing the synthetic shapes instead", root)
    ds = build_dataset({"type": "synthetic_shapes", "split": "test", "num_samples": 48, "rotation": "none",
                        "max_cut": 0.0})
    wanted = ("torus", "cone", "helix", "capsule")
    return ({n: ds[int(np.nonzero(ds.labels == ds.classes.index(n))[0][0])][0].numpy() for n in wanted},
            "synthetic shapes", "z")


def routing_model(ckpt: str | None, adapter: str | None) -> tuple[torch.nn.Module, bool]:
    """Point-MAE (40 classes) with Adapter-X: (model, trained?)."""
    from pointpeft.models import build_point_transformer, load_pretrained
    from pointpeft.peft import get_peft_model, load_adapter

    model = build_point_transformer("point_mae", num_classes=40)
    if ckpt:
        load_pretrained(model, ckpt)
    if adapter:
        load_adapter(model, adapter)
    else:
        get_peft_model(model, {"type": "adapterx"})
    return model.eval(), bool(ckpt and adapter)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="ModelNet40 HDF5 folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    ap.add_argument("--ckpt", help="Point-MAE pretrain/fine-tune checkpoint for the routing figure")
    ap.add_argument("--adapter", help="trained Adapter-X adapter folder for the routing figure")
    ap.add_argument("--run", help="an Adapter-X run folder (tools/train.py): its last-epoch model draws the routing "
                    "(any backbone size; its config and pretrained file are the run's own)")
    ap.add_argument("--backend", default="auto", choices=("auto", "open3d", "matplotlib"))
    ap.add_argument("--size", type=int, default=240, help="panel size in pixels")
    args = ap.parse_args(argv)
    setup_logging()
    set_seed(0)
    try:
        clouds, source, up = load_examples(args.root)
        view = View(up=up)
        size = (args.size, args.size)
        written = []
        panels = [Panel(p, None, name) for name, p in clouds.items()]
        render_panels(panels, args.out / "clouds.png", panel_size=size, view=view, backend=args.backend,
                      suptitle=f"{source}, 1024 points each")
        written.append(args.out / "clouds.png")

        from pointpeft.models.tokenizer import Group

        name = ROUTED if ROUTED in clouds else next(iter(clouds))
        patches = views.compute_patches(clouds[name], Group(64, 32))
        render_panels(views.group_panels(patches, name), args.out / "groups.png", panel_size=size, view=view,
                      backend=args.backend, suptitle="Point-MAE tokenizer: FPS centres and kNN patches")
        written.append(args.out / "groups.png")

        if args.run:
            from pointpeft.engine.evaluate import load_run_model

            model, cfg = load_run_model(args.run, "last")
            model, trained = model.eval(), True
            arch = str((cfg.get("model") or {}).get("type", "point_mae"))
        else:
            model, trained = routing_model(args.ckpt, args.adapter)
            arch = "point_mae"
        routing = views.capture_routing(model, clouds[name])
        depth = len(routing.choices)
        rpanels, legend = views.routing_panels(routing, blocks=[0, depth // 2, depth - 1])
        state = "trained" if trained else "random weights: a layout demo, not a learned routing"
        render_panels(rpanels, args.out / "routing.png", panel_size=size, view=view, legend=legend,
                      backend=args.backend, suptitle=f"Adapter-X: expert chosen per patch ({arch}, {state})")
        written.append(args.out / "routing.png")
    except PointPeftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in written:
        print(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} ({p.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
