"""The experiments' own library: everything that touches flags, files, the environment,
progress bars and plots, split by concern. The library (mtpjax) touches none of them.

  loop      train_and_evaluate: resume, train, log, guard, checkpoint, evaluate, report
  guards    config checks, NaN and divergence guards
  workdir   the lock, atomic JSON, the metrics log, the config comparison
  report    results tables and rows
  plots     the shared plots
  cli       the command line (`main`)
  env       every environment variable and the data directory
  timing    compile time
"""

from experiments._lib import cli, env, guards, loop, plots, report, timing, workdir
from experiments._lib.cli import main
from experiments._lib.guards import NonFiniteError, check_config, parse_settings
from experiments._lib.loop import Experiment, make_optimizer, train_and_evaluate
from experiments._lib.plots import plot_task_curves, plot_training_curve, save_figure
from experiments._lib.report import eval_rows, format_value, results_table
from experiments._lib.timing import compile_timer
from experiments._lib.workdir import ConfigMismatch, WorkdirLocked, workdir_lock

__all__ = ["ConfigMismatch", "Experiment", "NonFiniteError", "WorkdirLocked", "check_config",
           "cli", "compile_timer", "env", "eval_rows", "format_value", "guards", "loop", "main",
           "make_optimizer", "parse_settings", "plot_task_curves", "plot_training_curve", "plots",
           "report",
           "results_table", "save_figure", "timing", "train_and_evaluate", "workdir",
           "workdir_lock"]
