"""Speed and memory benchmarks of pointpeft (``python tools/benchmark.py`` or ``python -m benchmarks``).

One module per section (``sections/``: tokenizer, train, amp, inference, data, probe), the shared parts beside them
(timing statistics, memory, the training step, the fresh-process worker, plans, the report), and ``results/`` for
the JSON each run writes. Machine facts the library needs too (CPU flags, native bf16) live in
:mod:`pointpeft.utils.machine`.
"""
