#!/usr/bin/env python
"""Speed and memory benchmarks of pointpeft on this machine: the entry point of the ``benchmarks`` package.

    python tools/benchmark.py --quick | --full | --smoke [--sections ...]   (make bench = --quick)

Everything is in ``benchmarks/`` (``benchmarks/cli.py`` documents the options; ``benchmarks/README.md`` the results).
"""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
