"""Generated tables in the docs match what their scripts produce today (no hand-typed numbers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_parameter_tables_are_current():
    """docs/params.md and the README's copy equal scripts/param_table.py's output for the registered methods."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "param_table.py"), "--check"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    readme = (REPO / "README.md").read_text()
    assert "| adapterx | 421,993 | 1.90% |" in readme


def test_results_table_is_rebuilt_from_the_committed_ledger(tmp_path):
    """docs/results.md is exactly what ``scripts/sweep.py --ledger results/mn40-small --table-only`` writes from the
    committed ledger: a finished run that was not committed, or a hand edit, makes it differ."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for archived in (REPO / "docs").glob("results-*.md"):  # the pointer line to archived tables reads their names
        (docs / archived.name).write_text("")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep.py"), "--ledger",
                          "results/mn40-small", "--table-only", "--out", str(docs / "results.md")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rebuilt = (docs / "results.md").read_text()
    committed = (REPO / "docs" / "results.md").read_text()
    assert rebuilt == committed, ("docs/results.md is not the table of results/mn40-small: rebuild it with "
                                  "python scripts/sweep.py --ledger results/mn40-small --table-only")
