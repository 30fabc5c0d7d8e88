"""``python -m benchmarks``: the same command line as ``tools/benchmark.py``."""

import sys

from benchmarks.cli import main

sys.exit(main())
