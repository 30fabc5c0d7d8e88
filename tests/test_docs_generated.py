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
