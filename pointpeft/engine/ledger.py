"""The results ledger: the small, committed outputs of finished runs, so a fresh clone knows what is done.

A run trains in a (gitignored) run folder; when it finishes, its summary files — ``config.yaml``,
``results.json`` and the test JSON, never weights — are copied into a ledger entry under ``results/``, which is
committed. A sweep treats an entry whose ``results.json`` says ``finished`` as done and skips it, and every table
and plot is built from the ledger, so anyone can rebuild them from the repository alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from pointpeft.errors import DataError
from pointpeft.utils.io import atomic_write_text

#: What a ledger entry keeps of a run folder (``results.json`` is written last: an entry is finished only once the
#: rest is in place).
LEDGER_FILES = ("config.yaml", "test.json", "results.json")
#: Summaries are small; anything larger is not a summary (a weight file renamed by mistake, a huge history).
MAX_FILE_BYTES = 2 * 1024 * 1024


def entry_status(entry: Path) -> str:
    """``finished`` / ``running`` / ``failed`` ... as the entry's results.json says; ``absent`` without one."""
    f = Path(entry) / "results.json"
    if not f.is_file():
        return "absent"
    try:
        return str(json.loads(f.read_text()).get("status", "running"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{f}: unreadable ledger entry ({e}); delete it to rerun that run") from None


def is_finished(entry: Path) -> bool:
    return entry_status(entry) == "finished"


def record_run(run_dir: Path, entry: Path) -> Path:
    """Copy a finished run's summary files into ``entry`` (atomic per file, results.json last)."""
    run_dir, entry = Path(run_dir), Path(entry)
    if entry_status(run_dir) != "finished":
        raise DataError(f"{run_dir}: results.json does not say finished; only finished runs enter the ledger")
    entry.mkdir(parents=True, exist_ok=True)
    for name in LEDGER_FILES:
        src = run_dir / name
        if not src.is_file():
            continue
        if src.stat().st_size > MAX_FILE_BYTES:
            raise DataError(f"{src}: {src.stat().st_size} bytes is too large for a ledger summary "
                            f"(limit {MAX_FILE_BYTES}); the ledger keeps summaries, never weights")
        atomic_write_text(entry / name, src.read_text())
    return entry


def record_tree(run_root: Path, entry_root: Path, skip: Sequence[str] = ()) -> list[Path]:
    """Record every finished run folder below ``run_root`` (a few-shot method's folds) at the same relative path;
    folders below a top-level name in ``skip`` are left as the ledger has them."""
    run_root, entry_root = Path(run_root), Path(entry_root)
    out = []
    for f in sorted(run_root.rglob("results.json")):
        rel = f.parent.relative_to(run_root)
        if rel.parts and rel.parts[0] in skip:
            continue
        if entry_status(f.parent) == "finished":
            out.append(record_run(f.parent, entry_root / rel))
    return out


def finished_entries(root: Path) -> Iterator[Path]:
    """Every finished entry below ``root``, in path order."""
    root = Path(root)
    if root.is_dir():
        for f in sorted(root.rglob("results.json")):
            if is_finished(f.parent):
                yield f.parent

