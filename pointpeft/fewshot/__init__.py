"""Few-shot evaluation (N-way K-shot, folds, mean ± std) on top of the engine's Trainer, and MHR's cross-task
protocol. ``tools/fewshot.py`` is :func:`pointpeft.fewshot.cli.main`."""

from pointpeft.fewshot import mhr_protocol  # noqa: E402,F401  (registers tasks mhr_multitask, mhr_fewshot)
from pointpeft.fewshot.folds import ensure_folds
from pointpeft.fewshot.options import FewShotOptions, MhrProtocolOptions, fewshot_options, parse_folds
from pointpeft.fewshot.sweep import SweepReport, fold_config, fold_run_dir, run_sweep, write_summary
from pointpeft.fewshot.table import format_table, summarize_method

__all__ = ["FewShotOptions", "MhrProtocolOptions", "SweepReport", "ensure_folds", "fewshot_options", "fold_config",
           "fold_run_dir", "format_table", "parse_folds", "run_sweep", "summarize_method", "write_summary"]
