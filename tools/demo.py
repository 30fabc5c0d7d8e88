#!/usr/bin/env python
"""`make demo`: the whole story in a few minutes on a CPU, with nothing downloaded.

1. pretrain the demo backbone (point_mae_small on 256-point clouds) as a Point-MAE masked autoencoder on the
   embedded synthetic shapes (cfgs/demo/pretrain.yaml);
2. fine-tune Adapter-X, full fine-tuning and a linear probe from that pretrain.pth (cfgs/demo/<data>/*.yaml);
3. print a table (method | trainable params | trainable % | accuracy | time) and write, under ``--out``
   (experiments/demo): each run's folder (config, TensorBoard events, results.json, train.log), demo-results.json,
   demo-table.md, training curves, accuracy vs trainable parameters, and PNGs of a few clouds with the Adapter-X
   predictions and of an MAE reconstruction (Open3D offscreen, or matplotlib when Open3D cannot render here).

    python tools/demo.py                       # embedded synthetic shapes (~6 min on 2 cores)
    python tools/demo.py --data modelnet40     # fine-tune on the real ModelNet40 HDF5 instead (--data-root)
    python tools/demo.py --quick               # tiny sizes, a smoke run (< 1 min)

Everything trains through the engine's Trainer (the loop tools/train.py and tools/pretrain.py run).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pointpeft.config import Config, load_config
from pointpeft.errors import ConfigError
from pointpeft.utils.cli import run_guarded
from pointpeft.utils.misc import get_logger, setup_logging

log = get_logger("demo")
REPO = Path(__file__).resolve().parents[1]

CFG_DIR = REPO / "cfgs" / "demo"
#: The fine-tuned methods, in table order, with their display names (configs: cfgs/demo/<data>/<method>.yaml).
METHODS: dict[str, str] = {"adapterx": "Adapter-X", "full": "full fine-tuning", "linear": "linear probe"}
SHARED_DATA = Path(os.environ.get("POINTPEFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class DemoData:
    """One ``--data`` choice: where its fine-tune configs live and what comes before them."""

    finetune_dir: Path  # holds <method>.yaml for every key of METHODS
    pretrain: Path | None  # the MAE pretraining config; None: the fine-tune configs bring their own weights
    clouds: bool  # point clouds (cloud PNGs) or images
    quick: tuple[str, ...]  # --quick overrides of the fine-tune configs
    note: str = ""


#: --quick: a smoke run of the same flow (every file is written; the numbers mean nothing): one block, 8 patches
#: of 128-point clouds, two 2-step epochs, fp32 (no bf16 kernel warm-up for so few steps).
_QUICK_MODEL = ("model.depth=1", "model.num_group=8", "train.amp=fp32", "train.epochs=2",
                "train.max_steps_per_epoch=2", "data.batch_size=16", "data.train.npoints=128", "data.val.npoints=128")
QUICK_PRETRAIN = [*_QUICK_MODEL, "data.train.num_samples=32", "data.val.num_samples=16"]
_QUICK_POINTS = (*_QUICK_MODEL, "data.val_batch_size=32")
DEMOS: dict[str, DemoData] = {
    "synthetic": DemoData(CFG_DIR / "synthetic", CFG_DIR / "pretrain.yaml", True,
                          (*_QUICK_POINTS, "data.train.num_samples=32", "data.val.num_samples=24")),
    "modelnet40": DemoData(CFG_DIR / "modelnet40", CFG_DIR / "pretrain.yaml", True,
                           (*_QUICK_POINTS, "train.eval_every=1")),
    "digits2d": DemoData(REPO / "cfgs" / "vit" / "digits", None, False,
                         ("train.epochs=2", "train.max_steps_per_epoch=2"),
                         note="2D path: vit_test_tiny on scikit-learn digits from random weights (no pretrained "
                              "ViT offline), so the linear probe only shows what a random backbone gives"),
}


def default_modelnet_root() -> Path:
    """The shared HDF5 copy when this machine has one, else the repository's data folder."""
    shared = SHARED_DATA / "modelnet40_ply_hdf5_1024"
    return shared if shared.is_dir() else Path("datasets/ModelNet40")


def data_overrides(data: str, root: Path | None) -> list[str]:
    """Dotted overrides that point the fine-tune configs of ``data`` at their files."""
    if data != "modelnet40":
        return []
    root = root or default_modelnet_root()
    return [f"data.train.root={root}", f"data.val.root={root}"]


# ---------------------------------------------------------------------------------------------------------------
# one run through the engine
# ---------------------------------------------------------------------------------------------------------------
def run_one(cfg: Config, run_dir: Path, ckpt: str | None = None) -> tuple[Any, dict[str, Any], float]:
    """Train one config into ``run_dir`` with the engine's Trainer; (trainer, results, seconds)."""
    from pointpeft.engine.run_dir import prepare_run_dir
    from pointpeft.engine.trainer import Trainer

    run_dir = prepare_run_dir(run_dir, explicit_name=True, overwrite=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    root_logger = logging.getLogger("pointpeft")
    root_logger.addHandler(handler)
    t0 = time.perf_counter()
    try:
        trainer = Trainer(cfg, run_dir, ckpt=ckpt)
        trainer.write_config()
        results = trainer.fit()
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    return trainer, results, time.perf_counter() - t0


def check_data(cfg: Config) -> None:
    """Open the fine-tuning validation set before minutes of pretraining: a missing ModelNet40 folder fails now."""
    from pointpeft.data import build_dataset

    build_dataset(cfg["data"]["val"], cfg, "data.val")


def progress_override() -> str:
    """tqdm bars when someone watches a terminal; per-epoch log lines always."""
    return f"train.progress={'on' if sys.stderr.isatty() else 'off'}"


# ---------------------------------------------------------------------------------------------------------------
# table and figures
# ---------------------------------------------------------------------------------------------------------------
def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: method | trainable params | trainable % | accuracy | time."""
    head = ["method", "trainable params", "trainable %", "accuracy (%)", "time (s)"]
    body = [[r["label"], f"{r['trainable']:,}", f"{r['percent']:.2f}", f"{r['acc']:.2f}", f"{r['time_s']:.0f}"]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def make_plots(out: Path, rows: Sequence[dict[str, Any]], title: str) -> dict[str, str]:
    """Fine-tuning curves and accuracy vs trainable parameters (pointpeft.viz.plots)."""
    from pointpeft.viz.plots import ParamPoint, load_run, plot_accuracy_vs_params, plot_curves

    runs = [load_run(r["run_dir"], label=r["label"], need_history=True) for r in rows]
    curves = plot_curves(runs, out / "curves.png", metrics=["train_loss", "train_acc", "val_acc"])
    params = plot_accuracy_vs_params([ParamPoint(r["label"], r["trainable"], r["acc"], r["total"]) for r in rows],
                                     out / "accuracy-vs-params.png", title=title)
    return {"curves": str(curves), "accuracy_vs_params": str(params)}


def plot_pretrain(out: Path, pretrain_dir: Path) -> str:
    """The MAE's training loss and held-out Chamfer-L2 per epoch."""
    from pointpeft.viz.plots import load_run, plot_curves

    run = load_run(pretrain_dir, label="Point-MAE", need_history=True)
    return str(plot_curves([run], out / "pretrain-curves.png", metrics=["train_loss", "val_cd_l2"]))


def make_cloud_pngs(out: Path, finetuned: Any, pretrain_model: Any | None, num: int = 6) -> dict[str, Any]:
    """clouds.png: ``num`` validation clouds titled 'true / predicted' by the fine-tuned Adapter-X (green right,
    red wrong); reconstruction.png: the MAE's input, visible patches and reconstruction of the first one."""
    import torch

    from pointpeft.viz import open3d_status, render_panels, resolve_backend
    from pointpeft.viz.views import predict, prediction_panels, recon_panels

    ds = finetuned.val_set
    idx = list(range(min(num, len(ds))))
    clouds = torch.stack([torch.as_tensor(np.asarray(ds[i][0]))[:, :3].float() for i in idx])
    labels = np.array([int(ds[i][1]) for i in idx])
    preds = predict(finetuned.model, clouds)
    backend = resolve_backend("auto")
    render_panels(prediction_panels(clouds.numpy(), labels, preds, list(ds.classes)), out / "clouds.png",
                  ncols=3, suptitle="validation clouds: true / predicted by Adapter-X")
    figures: dict[str, Any] = {"clouds": str(out / "clouds.png")}
    if pretrain_model is not None:
        panels, legend = recon_panels(pretrain_model, clouds[0], seed=0)
        render_panels(panels, out / "reconstruction.png", ncols=3, legend=legend, same_scale=True,
                      suptitle="Point-MAE: masked patches reconstructed")
        figures["reconstruction"] = str(out / "reconstruction.png")
    works, reason = open3d_status()
    used = "open3d" if backend == "open3d" and works else "matplotlib"
    if used == "open3d":
        log.info("clouds rendered with Open3D (offscreen)")
    else:
        log.warning("clouds rendered with matplotlib, not Open3D: %s", reason)
    figures.update(renderer=used, renderer_note=reason)
    return figures


# ---------------------------------------------------------------------------------------------------------------
# the flow
# ---------------------------------------------------------------------------------------------------------------
def pretrain_backbone(cfg_path: Path, out: Path, overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """Step 1: the Point-MAE pretraining run; (trainer, summary) with the pretrain.pth path."""
    pre_dir = out / "pretrain"
    trainer, res, secs = run_one(load_config(cfg_path, overrides), pre_dir)
    ckpt = pre_dir / "pretrain.pth"
    if not ckpt.is_file():
        raise ConfigError(f"{cfg_path}: the pretraining wrote no {ckpt}")
    info = {"config": str(cfg_path.relative_to(REPO)), "run_dir": str(pre_dir), "ckpt": str(ckpt),
            "epochs": res["epochs_done"], "cd_l2_first": res["history"][0].get("val_cd_l2"),
            "cd_l2": res["last"].get("val_cd_l2"), "params": res["params"]["total"], "time_s": round(secs, 1)}
    log.info("pretraining: Chamfer-L2 of the hidden patches %.4f (epoch 1) -> %.4f in %d epochs (%.0f s)",
             info["cd_l2_first"], info["cd_l2"], info["epochs"], secs)
    return trainer, info


def demo(data: str, out: Path, quick: bool = False, data_root: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Pretrain, fine-tune every method, write the summary and figures; returns the summary dict."""
    t_start = time.perf_counter()
    spec = DEMOS[data]
    out.mkdir(parents=True, exist_ok=True)
    common = [progress_override(), f"seed={seed}"]
    if spec.note:
        log.info("%s", spec.note)

    ft_over = [*common, *data_overrides(data, data_root), *(spec.quick if quick else ())]
    ft_cfgs = {m: load_config(spec.finetune_dir / f"{m}.yaml", ft_over) for m in METHODS}
    check_data(ft_cfgs[next(iter(METHODS))])

    pre_trainer, pretrain, ckpt = None, None, None
    if spec.pretrain is not None:
        log.info("step 1/3: Point-MAE pretraining of the demo backbone on the embedded synthetic shapes")
        pre_trainer, pretrain = pretrain_backbone(spec.pretrain, out, [*common, *(QUICK_PRETRAIN if quick else [])])
        ckpt = pretrain["ckpt"]
    else:
        log.info("step 1/3: no pretraining for --data %s (the configs' model section says where weights come "
                 "from)", data)

    log.info("step 2/3: fine-tuning %s%s", ", ".join(METHODS.values()), f" from {ckpt}" if ckpt else "")
    rows: list[dict[str, Any]] = []
    trainers: dict[str, Any] = {}
    for method, label in METHODS.items():
        cfg_path = spec.finetune_dir / f"{method}.yaml"
        log.info("-- %s (%s)", label, cfg_path.relative_to(REPO))
        trainer, res, secs = run_one(ft_cfgs[method], out / method, ckpt=ckpt)
        trainers[method] = trainer
        last = res["last"]
        rows.append({"method": method, "label": label, "config": str(cfg_path.relative_to(REPO)),
                     "run_dir": str(out / method), "trainable": res["params"]["trainable"],
                     "total": res["params"]["total"], "percent": res["params"]["percent"],
                     "acc": float(last["val_acc"]), "mean_class_acc": float(last["val_mean_class_acc"]),
                     "best_acc": float(res["best"]["acc"]), "best_epoch": res["best"]["epoch"],
                     "epochs": res["epochs_done"], "time_s": round(secs, 1)})

    log.info("step 3/3: table, figures")
    table = format_table(rows)
    figures = make_plots(out, rows, f"demo on {data}: accuracy vs trainable parameters")
    if pretrain is not None:
        figures["pretrain_curves"] = plot_pretrain(out, Path(pretrain["run_dir"]))
    if spec.clouds:
        figures.update(make_cloud_pngs(out, trainers["adapterx"], pre_trainer.model if pre_trainer else None))
    by = {r["method"]: r for r in rows}
    summary = {
        "data": data, "quick": quick, "seed": seed, "note": spec.note or None,
        "pretrain": pretrain,
        "runs": rows,
        "comparison": {"adapterx_minus_linear": round(by["adapterx"]["acc"] - by["linear"]["acc"], 2),
                       "adapterx_minus_full": round(by["adapterx"]["acc"] - by["full"]["acc"], 2)},
        "figures": figures,
        "table": table,
        "total_time_s": round(time.perf_counter() - t_start, 1),
    }
    from pointpeft.utils.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "demo-results.json", summary)
    atomic_write_text(out / "demo-table.md", table + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=list(DEMOS),
                   help="fine-tuning data: the embedded synthetic shapes, the real ModelNet40 (HDF5), or digits2d (the ViT path on scikit-learn digits, `make demo2d`)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="ModelNet40 folder for --data modelnet40 (default: ../shared/data/modelnet40_ply_hdf5_1024 "
                   "when present, else datasets/ModelNet40)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: experiments/demo, experiments/demo/<data> for other data)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the flow in well under a minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    out = args.out or Path("experiments") / "demo" / ("" if args.data == "synthetic" else args.data)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(logging.INFO, log_file=out / "demo.log")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary, rc = run_guarded(lambda: demo(args.data, out, quick=args.quick, data_root=args.data_root,
                                           seed=args.seed), log)
    if summary is None:
        return rc
    print()
    pre = summary["pretrain"]
    if pre is not None:
        print(f"pretraining ({pre['epochs']} epochs, {pre['time_s']:.0f} s): held-out Chamfer-L2 "
              f"{pre['cd_l2_first']:.4f} (epoch 1) -> {pre['cd_l2']:.4f} (epoch {pre['epochs']})")
    if summary["note"]:
        print(f"note: {summary['note']}")
    print(f"fine-tuning on {summary['data']} (accuracy = last epoch on the validation split):")
    print(summary["table"])
    cmp_ = summary["comparison"]
    print(f"Adapter-X vs linear probe: {cmp_['adapterx_minus_linear']:+.2f} points; "
          f"vs full fine-tuning: {cmp_['adapterx_minus_full']:+.2f} points")
    figs = summary["figures"]
    pngs = ", ".join(v for k, v in figs.items() if isinstance(v, str) and v.endswith(".png"))
    drawn = f" (clouds drawn with {figs['renderer']})" if "renderer" in figs else ""
    print(f"figures: {pngs}{drawn}")
    print(f"summary: {out / 'demo-results.json'}; total {summary['total_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
