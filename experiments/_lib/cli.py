"""The command line every experiment shares: python -m experiments.<name> --workdir DIR
[--config.FIELD=VALUE ...]."""

import errno
import glob
import os
import shutil
import sys
from typing import Callable

import jax
import ml_collections

from experiments._lib import env, guards, loop, report, workdir as workdir_lib

# Errors of the user's input or environment, not of the code: one line and exit status 2.
# MTPJAX_TRACEBACK=1 shows the traceback of any of them.
USER_ERRORS = (workdir_lib.ConfigMismatch, workdir_lib.WorkdirLocked, PermissionError,
               FileNotFoundError, NotADirectoryError)


def _disk_full(e: BaseException) -> bool:
  """Whether an exception, or one in its chain (orbax wraps the OSError), is ENOSPC."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _fail(message: str, status: int) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _remove_partial_checkpoints(workdir: str) -> None:
  """Orbax's temporary directories of a save that did not finish (e.g. on a full disk)."""
  for tmp in glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*")):
    shutil.rmtree(tmp, ignore_errors=True)


def _guarded(run: Callable, workdir: str) -> None:
  """Runs `run()` with the CLI's error presentation: input errors as one line (exit 2), a
  full disk said first (exit 1, no partial checkpoint left), Ctrl-C with the step and how to
  resume (exit 130). Bugs keep their traceback."""
  if os.environ.get("MTPJAX_TRACEBACK") == "1":
    return run()
  try:
    return run()
  except guards.Interrupted as e:
    where = (f"checkpoint {e.checkpoint} written" if e.checkpoint else
             "no checkpoint could be written at this step; the last one in "
             f"{os.path.join(workdir, 'checkpoints')} is kept")
    print(f"\ninterrupted at step {e.step}: {where}. Run the same command to resume.",
          file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:
    print("\ninterrupted before training started; nothing was written. Run the same command "
          "to start again.", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # noqa: BLE001 (sorted below; anything else re-raised)
    if _disk_full(e):
      _remove_partial_checkpoints(workdir)
      _fail(f"no space left on device while writing to {workdir}: free some space (or use a "
            f"--workdir on another disk), then run the same command to resume from the last "
            f"checkpoint", 1)
    if isinstance(e, USER_ERRORS) or isinstance(e, OSError) and e.errno in (errno.EROFS,
                                                                           errno.EACCES):
      _fail(str(e), 2)
    raise


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


def usage(default_config: ml_collections.ConfigDict, choices=None, arg_fields=()) -> str:
  """--help: the command, every config field with its default, and the methods.

  The defaults are those of the `arg_fields` values given on the command line (e.g.
  `--config.algorithm=cavia --help` lists CAVIA's)."""
  # sys.argv[0] is experiments/<name>/__main__.py (or main.py): the module is the folder.
  module = "experiments." + os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0])))
  lines = [f"usage: python -m {module} --workdir DIR [--config.FIELD=VALUE ...] "
           f"[--allow_config_change]", "",
           "  --workdir DIR           config, metrics, checkpoints and results; a rerun with "
           "the same command resumes",
           "  --allow_config_change   resume a checkpoint whose config differs (shapes may "
           "not change)", ""]
  if arg_fields:
    chosen = ", ".join(f"{k}={default_config[k]!r}" for k in arg_fields)
    lines.append(f"config fields (defaults for {chosen}; setting "
                 f"{' or '.join('--config.' + k for k in arg_fields)} changes them):")
  else:
    lines.append("config fields (default):")
  for name, value in sorted(default_config.items()):
    lines.append(f"  --config.{name}={value!r}")
  if choices:
    field = "method" if "method" in default_config else "algorithm"
    lines += ["", f"config.{field} is one of: {', '.join(sorted(choices))}"]
  return "\n".join(lines)


def config_arg(argv, fields) -> str:
  """get_config's argument from the command line: "algorithm=cavia,ways=20" for
  --config.algorithm=cavia --config.ways 20 (the last of each wins, as with absl)."""
  values = {}
  for i, a in enumerate(argv):
    for name in fields:
      flag = f"--config.{name}"
      if a.startswith(flag + "="):
        values[name] = a[len(flag) + 1:]
      elif a == flag and i + 1 < len(argv):
        values[name] = argv[i + 1]
  return ",".join(f"{k}={v}" for k, v in values.items())


def main(config_lib, build: Callable, algorithms=None, *, meta: bool = True) -> None:
  """Entry point: python -m experiments.<name> --workdir DIR [--config.FIELD=VALUE ...].

  `config_lib`: the experiment's config module. Its ARG fields (an algorithm, the ways, ...)
  go into get_config's argument, so every default the run sees is the protocol's for them;
  the flags then override any field, and config_lib.check (if any) checks the result.
  """
  from absl import app, flags
  from ml_collections import config_flags

  try:
    default_config = config_lib.get_config(config_arg(sys.argv[1:], config_lib.ARG))
  except ValueError as e:  # an unknown algorithm or method, a non-integer ways
    _fail(str(e), 2)
  if any(a in ("-h", "--help", "-help") for a in sys.argv[1:]):
    import mtpjax as mj
    print(usage(default_config, algorithms if algorithms is not None
                else (mj.ALGORITHMS if meta else None), tuple(config_lib.ARG)))
    sys.exit(0)
  _check_config_flags(sys.argv[1:], default_config)
  defaults = default_config.copy_and_resolve_references()  # the flags override the original
  check = getattr(config_lib, "check", lambda config: None)
  flags.DEFINE_string("workdir", None, "directory for config, metrics, checkpoints, results",
                      required=True)
  flags.DEFINE_bool("allow_config_change", False,
                    "resume a checkpoint even though its config differs from this one")
  config_flags.DEFINE_config_dict("config", default_config, "experiment config; override "
                                  "fields with --config.FIELD=VALUE")

  def as_input_error(fn):
    """fn() where a ValueError or TypeError is the user's input (a bad config value, an
    infeasible setting, a data file that does not fit): one line and exit status 2."""
    try:
      return fn()
    except (ValueError, TypeError, workdir_lib.ConfigMismatch) as e:
      if os.environ.get("MTPJAX_TRACEBACK") == "1":
        raise
      _fail(str(e), 2)

  def configured():
    """The checked config."""
    guards.check_integer_fields(flags.FLAGS.config, defaults)
    config = flags.FLAGS.config
    check(config)
    guards.check_config(config, algorithms, meta=meta)
    workdir_lib.check_workdir(flags.FLAGS.workdir)
    # Before any costly setup (intents computes features for half a minute): a workdir
    # holding another run's checkpoints is refused now, touching nothing.
    loop.check_resumable(config, flags.FLAGS.workdir,
                         allow_config_change=flags.FLAGS.allow_config_change)
    return config

  def run(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    config = as_input_error(configured)

    def work():
      env.apply_xla_flags(config.get("xla_flags"))
      env.initialize_from_env()  # a multi-process launch (docs: scaling)
      experiment = as_input_error(lambda: build(config, loop.make_optimizer(config)))
      results = loop.train_and_evaluate(config, flags.FLAGS.workdir, experiment,
                                        allow_config_change=flags.FLAGS.allow_config_change)
      if jax.process_index() == 0:
        print(report.results_table(results))
        print(f"wrote {os.path.join(flags.FLAGS.workdir, 'results.json')}")

    _guarded(work, flags.FLAGS.workdir)

  app.run(run)
