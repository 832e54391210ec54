"""The command line every experiment shares: python -m experiments.<name> --workdir DIR
[--config.FIELD=VALUE ...]."""

import os
import sys
from typing import Callable

import jax
import ml_collections

from experiments._lib import env, guards, loop, report


def _check_config_flags(argv, default_config) -> None:
  """Exits with one clear line for an unknown --config.FIELD (absl would bury its "did you
  mean" under three tracebacks)."""
  import difflib
  known = set(default_config.keys())
  for arg in argv:
    if arg.startswith("--config."):
      field = arg[len("--config."):].split("=", 1)[0].split(".", 1)[0]
      if field not in known:
        close = difflib.get_close_matches(field, sorted(known), n=1)
        hint = f"; did you mean --config.{close[0]}?" if close else ""
        print(f"error: unknown config field {field!r}{hint} Known fields: "
              f"{', '.join(sorted(known))}", file=sys.stderr)
        sys.exit(2)


def main(default_config: ml_collections.ConfigDict, resolve: Callable, build: Callable,
         algorithms=None, *, meta: bool = True) -> None:
  """Entry point: python -m experiments.<name> --workdir DIR [--config.FIELD=VALUE ...]."""
  from absl import app, flags
  from ml_collections import config_flags

  _check_config_flags(sys.argv[1:], default_config)
  flags.DEFINE_string("workdir", None, "directory for config, metrics, checkpoints, results",
                      required=True)
  flags.DEFINE_bool("allow_config_change", False,
                    "resume a checkpoint even though its config differs from this one")
  config_flags.DEFINE_config_dict("config", default_config, "experiment config; override "
                                  "fields with --config.FIELD=VALUE")

  def run(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    config = resolve(flags.FLAGS.config)
    guards.check_config(config, algorithms, meta=meta)
    env.apply_xla_flags(config.get("xla_flags"))
    env.initialize_from_env()  # a multi-process launch (docs: scaling)
    experiment = build(config, loop.make_optimizer(config))
    results = loop.train_and_evaluate(config, flags.FLAGS.workdir, experiment,
                                 allow_config_change=flags.FLAGS.allow_config_change)
    if jax.process_index() == 0:
      print(report.results_table(results))
      print(f"wrote {os.path.join(flags.FLAGS.workdir, 'results.json')}")

  app.run(run)
