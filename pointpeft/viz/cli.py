"""What ``tools/visualize.py`` and the ``pointpeft-visualize`` command run: look at point clouds, patches,
Adapter-X routing, MAE reconstructions, predictions and run charts.

Clouds come from a file (``--file``: .ply .pcd .npy .xyz .txt .off; meshes are sampled uniformly by area), a data
set (``--dataset modelnet40 --root DIR --split test --index 3``) or the data section of a run config
(``--config cfgs/x.yaml --split test --index 3``). With ``--out x.png`` the figure is rendered headless; without it
a window opens (when a display exists).

    python tools/visualize.py cloud --file /work/shared/data/meshes/bathtub_0001.off --out bathtub.png
    python tools/visualize.py cloud --dataset modelnet40 --root DIR --index 3 7 11 --out clouds.png
    python tools/visualize.py groups --model point_mae --file chair.npy --out groups.png
    python tools/visualize.py routing --config run.yaml --ckpt pretrain.pth --adapter run/adapter --block 5 \\
        --index 0 --out routing.png
    python tools/visualize.py recon --config cfgs/pretrain/point_mae.yaml --ckpt pretrain.pth --index 0 --out r.png
    python tools/visualize.py predictions --config run.yaml --ckpt pretrain.pth --adapter run/adapter --num 12 \\
        --out preds.png
    python tools/visualize.py plot params --results a/results.json b/results.json --out params.png
    python tools/visualize.py plot curves|usage|fewshot --results run/results.json --out x.png

Models: ``--config`` (its ``model:`` and ``peft:`` sections) or ``--model NAME`` (a registered backbone, e.g.
point_mae, point_mae_tiny, point_mae_pretrain) with ``--peft TYPE``; ``--ckpt`` loads pretrained/fine-tuned weights,
``--adapter DIR`` a saved adapter (it applies its own PEFT method). Random weights are allowed (a warning says so).
``POINTPEFT_VIZ_BACKEND=matplotlib`` (or ``--backend``) skips Open3D.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pointpeft.config import load_config, yaml_load
from pointpeft.data.point_files import load_points
from pointpeft.errors import CheckpointError, ConfigError, InputError, PointPeftError
from pointpeft.utils.misc import get_logger, set_seed, setup_logging
from pointpeft.viz import plots, views
from pointpeft.viz.camera import View
from pointpeft.viz.render import Panel, has_display, render_panels, show_panels

log = get_logger("visualize")
MODES = ("cloud", "groups", "routing", "recon", "predictions")


# -- arguments -------------------------------------------------------------------------------------------------

def _add_view_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("figure")
    g.add_argument("--out", help="write a PNG here (headless); without it a window opens")
    g.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("W", "H"), help="pixels per panel")
    g.add_argument("--ncols", type=int, help="panels per row (default: up to 5)")
    g.add_argument("--elev", type=float, default=22.0, help="camera elevation in degrees")
    g.add_argument("--azim", type=float, default=-60.0, help="camera azimuth in degrees")
    g.add_argument("--up", default="z", help="the data's up axis: z (ModelNet HDF5), y (Point-MAE txt/ShapeNet), "
                   "x, -z, -y, -x")
    g.add_argument("--point-size", type=float, help="point size in pixels (default: from the panel width)")
    g.add_argument("--backend", default="auto", choices=("auto", "open3d", "matplotlib"))
    g.add_argument("--title", help="a title above the figure")
    g.add_argument("--same-scale", action="store_true", help="one frame for all panels (recon: one per sample by default)")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input clouds")
    g.add_argument("--file", nargs="+", help="point cloud / mesh files (.ply .pcd .npy .xyz .txt .pts .off)")
    g.add_argument("--dataset", help="a registered data set type (modelnet40, scanobjectnn, synthetic_shapes ...)")
    g.add_argument("--root", help="data set root (for --dataset)")
    g.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="more data set arguments, e.g. --dataset-arg variant=pb_t50_rs")
    g.add_argument("--split", default="test", help="data set split (default test)")
    g.add_argument("--index", type=int, nargs="+", help="sample indices in the data set")
    g.add_argument("--num", type=int, help="number of samples (evenly spread over the split unless --random)")
    g.add_argument("--random", action="store_true", help="with --num: draw the samples at random (--seed)")
    g.add_argument("--npoints", type=int, help="points per cloud (model modes default to 1024; mesh files are "
                   "sampled to this many, default 2048 for cloud)")
    g.add_argument("--seed", type=int, default=0)


def _add_model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", help="run config (YAML): model, peft and data sections")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    g.add_argument("--model", help="backbone type instead of --config (e.g. point_mae, point_mae_tiny)")
    g.add_argument("--num-classes", type=int, help="with --model: classes of the head")
    g.add_argument("--ckpt", help="checkpoint to load (pretrain or fine-tuned)")
    if adapter:
        g.add_argument("--peft", help="with --model: PEFT method type (e.g. adapterx) applied with defaults")
        g.add_argument("--adapter", help="saved adapter folder (adapter.safetensors + adapter_config.json)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("cloud", help="show clouds (files or data set samples)")
    _add_input_args(p)
    p.add_argument("--config", help="run config whose data section names the data set")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--save-ply", help="also write the (first) cloud with its colours as PLY")
    _add_view_args(p)
    p = sub.add_parser("groups", help="FPS centres and their kNN patches")
    _add_input_args(p)
    _add_model_args(p, adapter=False)
    p.add_argument("--num-group", type=int, help="patches (default: the model's, else 64)")
    p.add_argument("--group-size", type=int, help="points per patch (default: the model's, else 32)")
    _add_view_args(p)
    p = sub.add_parser("routing", help="patches coloured by the Adapter-X expert chosen for them")
    _add_input_args(p)
    _add_model_args(p)
    p.add_argument("--block", type=int, nargs="+", help="block(s) to show (default: every block)")
    p.add_argument("--head", type=int, help="sub-token head (default: the majority over heads)")
    p.add_argument("--save-ply", help="also write the first panel's cloud with its expert colours as PLY")
    _add_view_args(p)
    p = sub.add_parser("recon", help="MAE input, masked input and reconstruction")
    _add_input_args(p)
    _add_model_args(p, adapter=False)
    _add_view_args(p)
    p = sub.add_parser("predictions", help="test clouds titled true / predicted class")
    _add_input_args(p)
    _add_model_args(p)
    _add_view_args(p)
    p = sub.add_parser("plot", help="charts of runs")
    p.add_argument("kind", choices=("curves", "params", "usage", "fewshot"))
    p.add_argument("--results", nargs="+", required=True, help="results.json files, run folders or event files")
    p.add_argument("--labels", nargs="+", help="names of the runs (default: from the results / folder names)")
    p.add_argument("--metric", nargs="+", help="curves: metrics to plot; params: the accuracy key to use")
    p.add_argument("--title")
    p.add_argument("--out", required=True, help="output PNG")
    return ap


# -- inputs ----------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One input cloud: points (N, 3), its label (None for files), a title and the file's colours if any."""

    points: np.ndarray
    label: int | None
    title: str
    colors: np.ndarray | None = None


def _parse_kv(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"{what}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml_load(v)
    return out


def dataset_node(args: argparse.Namespace, cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The data set config to build: from --dataset, else from the config's data section (split ``--split``)."""
    if args.dataset:
        node: dict[str, Any] = {"type": args.dataset, "split": args.split}
        if args.root:
            node["root"] = args.root
        node.update(_parse_kv(args.dataset_arg, "--dataset-arg"))
        return node
    if cfg is None or "data" not in cfg:
        return None
    data = cfg["data"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cfg.source_of('data') if hasattr(cfg, 'source_of') else 'config'}: data must be a mapping")
    for key in (args.split, f"{args.split}_set", "val" if args.split == "test" else None):
        sub = data.get(key) if key else None
        if isinstance(sub, Mapping):
            sub = sub.get("dataset", sub)
            if isinstance(sub, Mapping) and ("type" in sub or "NAME" in sub):
                node = dict(sub)
                kind = str(node.get("type") or node.get("NAME"))
                if "split" not in node and key != "val" and _accepts(kind, "split"):
                    node["split"] = args.split  # data.test without a split key means the test split
                return node
    if "type" in data:
        return {**data, "split": args.split}
    raise ConfigError(f"config data section has no {args.split!r} data set (keys: {sorted(data)}); "
                      "pass --dataset/--root or --file")


def _pick_indices(n: int, args: argparse.Namespace, default_num: int) -> list[int]:
    if args.index:
        bad = [i for i in args.index if not -n <= i < n]
        if bad:
            raise InputError(f"--index {bad} out of range for a split of {n} samples")
        return [i % n for i in args.index]
    num = min(args.num or default_num, n)
    if args.random:
        return sorted(np.random.default_rng(args.seed).choice(n, num, replace=False).tolist())
    return np.linspace(0, n - 1, num).round().astype(int).tolist() if num > 1 else [0]


def _accepts(kind: str, arg: str) -> bool:
    import inspect

    from pointpeft.registry import DATASETS

    try:
        params = inspect.signature(DATASETS.get(kind)).parameters
    except (ConfigError, TypeError, ValueError):
        return True  # let build_dataset report it
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def load_samples(args: argparse.Namespace, cfg: Mapping[str, Any] | None, npoints: int | None,
                 normalize: bool, default_num: int = 1, mesh_points: int | None = None
                 ) -> tuple[list[Sample], list[str] | None]:
    """(the clouds named on the command line, the data set's class names or None for files). ``npoints``
    resamples every cloud; ``mesh_points`` only sets how many points a mesh file is sampled to."""
    if args.file:
        out = []
        for f in args.file:
            pts, cols = load_points(f, num_points=npoints, seed=args.seed, normalize=normalize,
                                    mesh_points=mesh_points)
            out.append(Sample(pts, None, Path(f).name, cols))
        return out, None
    node = dataset_node(args, cfg)
    if node is None:
        raise InputError("no input: pass --file, --dataset (with --root) or a --config with a data section")
    from pointpeft.data import build_dataset

    kind = str(node.get("type") or node.get("NAME"))
    if npoints and "npoints" not in node and _accepts(kind, "npoints"):
        node["npoints"] = npoints
    node.pop("transforms", None)  # show the data as stored, without augmentation
    ds = build_dataset(node)
    classes = list(getattr(ds, "classes", []) or []) or None
    out = []
    for i in _pick_indices(len(ds), args, default_num):
        pts, label = ds[i]
        pts = pts.numpy()[:, :3] if isinstance(pts, torch.Tensor) else np.asarray(pts)[:, :3]
        name = classes[label] if classes and 0 <= int(label) < len(classes) else str(label)
        out.append(Sample(np.ascontiguousarray(pts, dtype=np.float32), int(label), f"#{i} {name}"))
    return out, classes


# -- models ----------------------------------------------------------------------------------------------------

def _load_full_state(model: nn.Module, path: str) -> None:
    """Load a whole-model checkpoint (e.g. a Point-MAE pretraining model) and report what did not match."""
    from pointpeft.models.pretrained import extract_state_dict, read_checkpoint

    state, _ = extract_state_dict(read_checkpoint(path), path)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise CheckpointError(f"{path}: none of its tensors matches the model {type(model).__name__} "
                              f"(checkpoint keys look like {list(state)[:3]}, the model's like {list(own)[:3]})")
    bad = [k for k in shared if state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
                              f"model expects {tuple(own[bad[0]].shape)}")
    res = model.load_state_dict({k: state[k] for k in shared}, strict=False)
    if res.missing_keys:
        log.warning("%s: %d model tensors not in the checkpoint (left as initialised), e.g. %s", path,
                    len(res.missing_keys), res.missing_keys[:3])
    unused = [k for k in state if k not in own]
    if unused:
        log.warning("%s: %d checkpoint tensors unused, e.g. %s", path, len(unused), unused[:3])


def build_model_from_args(args: argparse.Namespace, cfg: Mapping[str, Any] | None) -> nn.Module:
    """Backbone from --config/--model, weights from --ckpt, PEFT from --adapter (or the config's peft section)."""
    from pointpeft import build_model

    if cfg is not None and "model" in cfg:
        node = dict(cfg["model"])
    elif args.model:
        node = {"type": args.model}
    else:
        raise InputError("no model: pass --config (with a model section) or --model NAME")
    if args.num_classes is not None:
        node["num_classes"] = args.num_classes
    model = build_model(node)
    if args.ckpt:
        if hasattr(model, "reconstruct"):
            _load_full_state(model, args.ckpt)
        else:
            from pointpeft.models import load_pretrained

            report = load_pretrained(model, args.ckpt)
            log.info("loaded %s: %s", args.ckpt, report)
    adapter = getattr(args, "adapter", None)
    peft_node = getattr(args, "peft", None) and {"type": args.peft}
    if peft_node is None and cfg is not None and cfg.get("peft"):
        peft_node = dict(cfg["peft"])
    if adapter:
        from pointpeft.peft import load_adapter

        load_adapter(model, adapter)
    elif peft_node and hasattr(args, "adapter"):
        from pointpeft.peft import get_peft_model

        get_peft_model(model, peft_node)
    if not args.ckpt and not adapter:
        log.warning("no --ckpt/--adapter: the model has random weights (fine for checking the pipeline only)")
    return model.eval()


def _model_npoints(args: argparse.Namespace) -> int:
    return args.npoints or 1024


# -- modes -----------------------------------------------------------------------------------------------------

def _config(args: argparse.Namespace) -> Any:
    path = getattr(args, "config", None)
    return load_config(path, getattr(args, "set", [])) if path else None


def _panels_cloud(args: argparse.Namespace) -> tuple[list[Panel], list]:
    cfg = _config(args)
    samples, _ = load_samples(args, cfg, args.npoints, normalize=False, default_num=1, mesh_points=2048)
    panels = [Panel(s.points, s.colors, f"{s.title} ({len(s.points)} pts)") for s in samples]
    return panels, []


def _group_module(args: argparse.Namespace, cfg: Any) -> nn.Module:
    """A Group with the model's patch settings (when a model is named), overridden by --num-group/--group-size."""
    from pointpeft import build_model
    from pointpeft.models.tokenizer import Group

    num_group, group_size, backend = 64, 32, "auto"
    node = dict(cfg["model"]) if cfg is not None and "model" in cfg else ({"type": args.model} if args.model else None)
    if node is not None:
        g = getattr(build_model(node), "group_divider", None)
        if g is None:
            raise InputError(f"model {node.get('type')!r} has no point tokenizer (group_divider)")
        num_group, group_size, backend = g.num_group, g.group_size, g.backend
    return Group(args.num_group or num_group, args.group_size or group_size, backend=backend)


def _panels_groups(args: argparse.Namespace) -> tuple[list[Panel], list]:
    cfg = _config(args)
    group = _group_module(args, cfg)
    samples, _ = load_samples(args, cfg, _model_npoints(args), normalize=True)
    panels: list[Panel] = []
    for s in samples:
        panels += views.group_panels(views.compute_patches(s.points, group), s.title)
    return panels, []


def _panels_routing(args: argparse.Namespace) -> tuple[list[Panel], list]:
    cfg = _config(args)
    model = build_model_from_args(args, cfg)
    samples, _ = load_samples(args, cfg, _model_npoints(args), normalize=True)
    panels: list[Panel] = []
    legend: dict[str, tuple] = {}
    for s in samples:
        routing = views.capture_routing(model, s.points)
        ps, lg = views.routing_panels(routing, args.block, args.head, title=s.title)
        panels += ps
        legend.update(lg)
    experts = sorted((k for k in legend if k.startswith("expert")), key=lambda k: int(k.split()[1]))
    return panels, [(k, legend[k]) for k in experts] + [(k, v) for k, v in legend.items() if k not in experts]


def _panels_recon(args: argparse.Namespace) -> tuple[list[Panel], list]:
    cfg = _config(args)
    model = build_model_from_args(args, cfg)
    samples, _ = load_samples(args, cfg, _model_npoints(args), normalize=True)
    panels: list[Panel] = []
    legend: list = []
    for s in samples:
        ps, legend = views.recon_panels(model, s.points, seed=args.seed)
        ps[0].title = f"{s.title}: {ps[0].title}"
        panels += ps
    if args.ncols is None:
        args.ncols = 3
    if not args.same_scale:  # each input, its masked view and its reconstruction share one frame
        args.same_scale = [k // 3 for k in range(len(panels))]
    return panels, legend


def _panels_predictions(args: argparse.Namespace) -> tuple[list[Panel], list]:
    cfg = _config(args)
    model = build_model_from_args(args, cfg)
    samples, classes = load_samples(args, cfg, _model_npoints(args), normalize=args.file is not None,
                                    default_num=12)
    sizes = {len(s.points) for s in samples}
    if len(sizes) != 1:
        raise InputError(f"clouds have different sizes {sorted(sizes)}; pass --npoints")
    clouds = torch.from_numpy(np.stack([s.points for s in samples]))
    preds = views.predict(model, clouds)
    labels = np.array([s.label if s.label is not None else -1 for s in samples])
    panels = views.prediction_panels(clouds.numpy(), labels, preds, classes)
    for p, s, pred in zip(panels, samples, preds):
        if s.label is None:  # a file: no ground truth, show the prediction only
            p.title = f"{s.title}: {classes[pred] if classes else f'class {pred}'}"
            p.title_color = (0.1, 0.1, 0.1)
        else:
            p.title = f"{s.title.split(' ', 1)[0]} {p.title}"
    known = labels >= 0
    if known.any():
        log.info("predictions: %d / %d right", int((labels[known] == preds[known]).sum()), int(known.sum()))
    if known.any() and args.title is None:
        args.title = "sample: true / predicted class"
    return panels, [("right", views.RIGHT_COLOR), ("wrong", views.WRONG_COLOR)] if known.any() else []


PANEL_MODES = {"cloud": _panels_cloud, "groups": _panels_groups, "routing": _panels_routing,
               "recon": _panels_recon, "predictions": _panels_predictions}


def run_plot(args: argparse.Namespace) -> Path:
    labels = args.labels or [None] * len(args.results)
    if len(labels) != len(args.results):
        raise InputError(f"--labels: {len(labels)} names for {len(args.results)} runs")
    runs = [plots.load_run(r, label=lb, need_history=args.kind == "curves") for r, lb in zip(args.results, labels)]
    if args.kind == "curves":
        return plots.plot_curves(runs, args.out, args.metric)
    if args.kind == "params":
        metric = args.metric[0] if args.metric else None
        return plots.plot_accuracy_vs_params(plots.param_points(runs, metric), args.out, args.title)
    if args.kind == "usage":
        if len(runs) != 1:
            raise InputError("plot usage: give one run")
        return plots.plot_expert_usage(plots.usage_from_run(runs[0]), args.out, args.title)
    return plots.plot_fewshot_table({r.name: plots.fewshot_cells(r) for r in runs}, args.out, args.title)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(10 if args.verbose else 20)
    try:
        if args.mode == "plot":
            sys.stdout.write(f"{run_plot(args)}\n")
            return 0
        set_seed(args.seed)
        if args.out is None and not has_display():
            raise InputError("no display to open a window on; pass --out file.png")
        panels, legend = PANEL_MODES[args.mode](args)
        view = View(args.elev, args.azim, args.up)
        if getattr(args, "save_ply", None):
            from pointpeft.data.point_files import write_ply

            write_ply(args.save_ply, panels[0].points, panels[0].colors)
        if args.out:
            img = render_panels(panels, args.out, ncols=args.ncols, panel_size=tuple(args.size), view=view,
                                point_size=args.point_size, legend=legend or None, suptitle=args.title,
                                backend=args.backend, same_scale=args.same_scale)
            sys.stdout.write(f"{args.out} ({img.shape[1]}x{img.shape[0]})\n")
        else:
            show_panels(panels, view=view, point_size=args.point_size, backend=args.backend)
    except PointPeftError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0

