"""Import a script of tools/ or scripts/ (not a package) as a module, the way the tests call their functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """``tools/x.py`` / ``scripts/x.py`` as a module, registered in ``sys.modules`` (dataclasses look their module
    up while the file executes)."""
    name = name or "pointpeft_script_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
