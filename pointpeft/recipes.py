"""The method recipes of cfgs/: ``cfgs/_base_/peft/<method>.yaml`` is a method's recipe, written once, and the
stems of those files are the one list of methods (the config generators, the real-data sweep and the VTAB summary
read it here). ``cfgs/_base_/peft/<family>/<method>.yaml`` is a departure for one family of leaves (a data set,
``fewshot``, ``vit``). The folder is the repository's (an editable install, as ``make setup`` makes)."""

from __future__ import annotations

from pathlib import Path

from pointpeft.config import load_config
from pointpeft.errors import ConfigError

CFGS = Path(__file__).resolve().parents[1] / "cfgs"
PEFT_DIR = CFGS / "_base_" / "peft"


def method_names() -> list[str]:
    """Every method with a recipe: the stems of cfgs/_base_/peft/*.yaml (the one list of methods)."""
    return sorted(p.stem for p in PEFT_DIR.glob("*.yaml"))


def family_recipe(method: str, family: str) -> Path | None:
    """``cfgs/_base_/peft/<family>/<method>.yaml`` when the family departs from the method's recipe, else None."""
    own = PEFT_DIR / family / f"{method}.yaml"
    return own if own.is_file() else None


def method_base(method: str, family: str) -> Path:
    """The recipe a ``family`` leaf of ``method`` inherits: the family's own file if there is one, else the
    method's."""
    own = family_recipe(method, family)
    if own is not None:
        return own
    generic = PEFT_DIR / f"{method}.yaml"
    if not generic.is_file():
        raise ConfigError(f"no recipe for method {method!r}: {generic} does not exist")
    return generic


def method_recipe(path: Path) -> tuple[str, str]:
    """(peft type, description words) of a method recipe file; both must be set."""
    cfg = load_config(path)
    peft_type = cfg.get_path("peft.type")
    words = cfg.get("description")
    if not isinstance(peft_type, str) or not isinstance(words, str):
        raise ConfigError(f"{path}: a method recipe needs peft.type and description (got {peft_type!r}, {words!r})")
    return peft_type, words


def family_methods(family: str) -> list[str]:
    """Methods with a departure for ``family`` (e.g. ``vit``: the methods that have a ViT recipe)."""
    return [m for m in method_names() if family_recipe(m, family) is not None]
