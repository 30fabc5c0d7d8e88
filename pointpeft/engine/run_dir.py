"""Experiment folders (Point-MAE's ``experiments/<config>/<group>/<exp-name>``) and the run's ``results.json``.

A folder that already holds a run is never overwritten silently: an explicit ``--exp-name`` that collides is an
error (``--overwrite`` or ``--resume`` say what to do), the default name gets a fresh suffix.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pointpeft.errors import ConfigError
from pointpeft.utils.misc import get_logger

log = get_logger("engine.run")

RUN_MARKERS = ("results.json", "ckpt-last.pth", "config.yaml")


def default_run_dir(config_path: str | Path, exp_name: str, root: str | Path = "experiments") -> Path:
    """``experiments/<config stem>/<config's folder>/<exp_name>`` (Point-MAE's layout)."""
    p = Path(config_path)
    return Path(root) / p.stem / p.parent.name / exp_name


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def prepare_run_dir(path: Path, *, explicit_name: bool, overwrite: bool) -> Path:
    """Create the run folder; never silently reuse one that holds a run."""
    if holds_run(path):
        if overwrite:
            log.warning("--overwrite: removing the earlier run in %s", path)
            shutil.rmtree(path)
        elif explicit_name:
            raise ConfigError(f"{path} already holds a run; pass --resume to continue it, --overwrite to replace "
                              "it, or choose another --exp-name")
        else:
            n = 1
            while holds_run(path.with_name(f"{path.name}_{n}")):
                n += 1
            new = path.with_name(f"{path.name}_{n}")
            log.warning("%s already holds a run; this run goes to %s", path, new)
            path = new
    path.mkdir(parents=True, exist_ok=True)
    return path


#: tracked paths that are run outputs, not code: the results ledger, which the sweep itself updates (its budget.json)
#: before a run starts, and the table and plots the sweep writes from it when an invocation ends (so the next
#: invocation of a chain starts beside them uncommitted); a change there does not make a run's code "dirty"
NOT_CODE = ("results", "docs/results.md", "docs/results_*.png")


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` when code has changes: anything tracked outside :data:`NOT_CODE`);
    None outside git."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                *(f":(top,exclude){p}" for p in NOT_CODE)], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, Any]:
    import numpy
    import torch

    import pointpeft

    out = {"python": platform.python_version(), "pointpeft": pointpeft.__version__, "torch": torch.__version__,
           "numpy": numpy.__version__}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def dump_config(cfg: dict[str, Any]) -> str:
    """The resolved config as YAML (what ``--resume`` and tools/test.py rebuild the run from)."""
    return yaml.safe_dump(plain_config(cfg), sort_keys=False)


def plain_config(node: Any) -> Any:
    """Plain dicts and lists (no Config subclass, no tuples) for YAML and JSON."""
    if isinstance(node, dict):
        return {str(k): plain_config(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain_config(v) for v in node]
    return node
