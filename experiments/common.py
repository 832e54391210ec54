"""The shared experiment loop: config, workdir, checkpoint/resume, metrics, progress, NaN guard,
results.json and plots. Each experiment script only defines its model, tasks and protocol.

Every run writes into its workdir:
  config.json     the resolved config
  metrics.jsonl   one JSON object per log step (meta-training loss, grad norm, speed)
  checkpoints/    orbax checkpoints (the last `keep_checkpoints`), resumed automatically
  results.json    the evaluation rows and the run's facts (speed, backend, versions)
  *.png           plots
"""

import contextlib
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

import mtpjax as mj
from mtpjax._src import sharding as sharding_lib
from mtpjax._src.checkpoint import Checkpointer

# Fields that may change between a checkpoint and its resumption without altering the run
# (xla_flags changes how XLA compiles the same computation, so only float rounding;
# eval_batch_size changes how many test tasks are vmapped at once, so only memory: the tasks
# are the same whatever the chunk size). Lowering eval_batch_size is how a run whose
# evaluation ran out of memory is finished from its last checkpoint.
# test_data (the text experiments) names an extra evaluation file: it changes which rows are
# added to results.json, never the training.
COSMETIC_FIELDS = ("progress", "xla_flags", "eval_batch_size", "test_data")


class Experiment(NamedTuple):
  """What an experiment script hands to the shared loop."""

  name: str                                  # benchmark name in results.json
  learner: mj.MetaLearner
  params: mj.Params                          # initial parameters
  evaluate: Callable[[mj.Params], tuple[list, Any]]   # params -> (rows, extras for plots)
  plot: Optional[Callable[..., list]] = None  # plot(workdir, params, history, extras) -> paths
  # A row field (e.g. "data"): rows of an earlier results.json in the workdir whose value of
  # it is not among this evaluation's are kept, so evaluating a finished run on new data adds
  # rows instead of replacing them.
  merge_by: Optional[str] = None
  facts: Optional[dict] = None               # added to results.json (e.g. parameter counts)
  # The device mesh the learner splits tasks over (mj.mesh_from_env), recorded in results.json.
  mesh: Optional[jax.sharding.Mesh] = None


class ConfigMismatch(ValueError):
  pass


class NonFiniteError(FloatingPointError):
  pass


def check_config(config: ml_collections.ConfigDict, algorithms=None, *,
                 meta: bool = True) -> None:
  """Clear errors for the fields every experiment shares, before anything compiles.

  `algorithms`: the names this experiment accepts (default: mtpjax.ALGORITHMS).
  `meta`: False for experiments without an inner loop (multi-task training), which have no
  meta-batch, inner steps or evaluation tasks.
  """

  def positive(name, allow_zero=False):
    value = config[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
      raise ValueError(f"config.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

  algorithms = sorted(mj.ALGORITHMS if algorithms is None else algorithms)
  if config.algorithm not in algorithms:
    raise ValueError(f"config.algorithm must be one of {algorithms}, got {config.algorithm!r}")
  meta_fields = ("meta_batch_size", "inner_lr", "eval_tasks") if meta else ()
  for name in meta_fields + ("outer_lr", "log_every", "checkpoint_every", "keep_checkpoints"):
    positive(name)
  if meta:
    positive("inner_steps", allow_zero=True)
  positive("num_steps", allow_zero=True)  # 0: evaluate the initialisation (a baseline)
  k = config.get("steps_per_call", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"config.steps_per_call must be a positive int, got {k!r}")
  for name in ("log_every", "checkpoint_every"):
    if config[name] % k:
      raise ValueError(f"config.steps_per_call ({k}) must divide config.{name} "
                       f"({config[name]}): logs and checkpoints fall between calls")
  eval_steps = list(config.eval_inner_steps) if meta else [0]
  if not eval_steps or any((not isinstance(s, int)) or s < 0 for s in eval_steps):
    raise ValueError(f"config.eval_inner_steps must be a non-empty list of integers >= 0, "
                     f"got {eval_steps!r}")
  factor = config.get("divergence_factor", 0.0)
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
      factor == 0 or factor > 1):
    raise ValueError(f"config.divergence_factor must be 0 (off) or > 1, got {factor!r}")
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy must be 'stop' or 'skip', got {config.nan_policy!r}")


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_timer(total: Optional[dict] = None):
  """Yields a dict whose "seconds" sums JAX's trace, lowering and XLA compile durations.

  With `total`, durations are added to that dict's "seconds", so code defined before the
  `with` can read it.

  These are JAX's own events (jax.monitoring), so the figure excludes running the step,
  which the first call's wall time includes (5-7 s for an Omniglot step with 15 queries).
  """
  total = {"seconds": 0.0} if total is None else total

  def listener(event, duration, **kwargs):
    del kwargs
    if event in COMPILE_EVENTS:
      total["seconds"] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield total
  finally:
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if unregister is not None:  # older jax has no unregister: the listener stays, harmless
      unregister(listener)


def make_optimizer(config) -> optax.GradientTransformation:
  opt = optax.adam(config.outer_lr)
  if config.nan_policy == "skip":
    # Skips updates with non-finite gradients; gives up after this many in a row.
    opt = optax.apply_if_finite(opt, max_consecutive_errors=config.nan_max_skips)
  return opt


def _skipped_updates(opt_state) -> int:
  return int(getattr(opt_state, "total_notfinite", 0))


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _window_mean(values: np.ndarray):
  mean = np.mean(values, axis=0)
  return float(mean) if mean.ndim == 0 else mean.tolist()


def _read_jsonl(path, max_step=None):
  """The metric rows of metrics.jsonl up to max_step, skipping damaged lines with a warning.

  A line is damaged when it is not UTF-8, not JSON (e.g. cut short by a crash), not an object,
  or has no integer "step". Damaged lines are dropped (the file is rewritten from the rows
  kept), so one bad line never blocks a resume.
  """
  if not os.path.exists(path):
    return []
  rows, damaged = [], []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").strip()
        if not line:
          continue
        row = json.loads(line)
      except (UnicodeDecodeError, json.JSONDecodeError):
        damaged.append(number)
        continue
      step = row.get("step") if isinstance(row, dict) else None
      if isinstance(step, bool) or not isinstance(step, int):
        damaged.append(number)
        continue
      if max_step is None or step <= max_step:
        rows.append(row)
  if damaged:
    shown = ", ".join(map(str, damaged[:20])) + (" ..." if len(damaged) > 20 else "")
    warnings.warn(f"{path}: skipped {len(damaged)} damaged line(s) (not UTF-8, not JSON, or "
                  f"without an integer step): line {shown}")
  return rows


class WorkdirLocked(RuntimeError):
  pass


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on workdir for the run (workdir/.lock: pid and host).

  The lock is an flock, which the kernel releases when its process dies, so a lock file left
  by a killed run is taken over (with a warning naming the old owner). A second run on a
  workdir in use exits at once, naming the owner.
  """
  import fcntl
  import socket
  path = os.path.join(workdir, ".lock")
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    owner = f.read().strip() or "another process"
    f.close()
    raise WorkdirLocked(f"{workdir} is in use by {owner}; wait for it to finish, stop it, or "
                        f"use another --workdir") from None
  f.seek(0)
  previous = f.read().strip()
  if previous:
    warnings.warn(f"{workdir}: taking over the lock left by {previous}, which is no longer "
                  f"running")
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on host {socket.gethostname()}")
  f.flush()
  try:
    yield
  finally:
    f.seek(0)
    f.truncate()
    f.flush()
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory; pass a directory path "
                     f"(it is created if absent)")


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)  # atomic: readers never see half a file


def _config_diff(old: dict, new: dict) -> list[str]:
  keys = sorted((set(old) | set(new)) - set(COSMETIC_FIELDS))
  return [f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in keys
          if old.get(k) != new.get(k)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, experiment: Experiment,
                       *, allow_config_change: bool = False) -> dict:
  """Meta-trains `experiment` for config.num_steps (resuming from workdir), then evaluates.

  Returns the results dict that is also written to workdir/results.json. The workdir is
  locked for the run: a second run on it fails at once, naming this one's pid and host.
  """
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  # Several processes of one run share the workdir: the first holds the lock and writes the
  # files; every process takes part in the checkpoints (orbax coordinates them).
  lock = workdir_lock(workdir) if _primary() else contextlib.nullcontext()
  with lock:
    return _train_and_evaluate(config, workdir, experiment,
                               allow_config_change=allow_config_change)


def _primary() -> bool:
  return jax.process_index() == 0


def _train_and_evaluate(config, workdir, experiment, *, allow_config_change):
  cfg = json.loads(json.dumps(config.to_dict()))  # as stored: tuples become lists
  learner = experiment.learner
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  state = learner.init(experiment.params, key=jax.random.key(config.seed))
  timing = {"timed_steps": 0, "timed_seconds": 0.0, "compile_seconds": 0.0}
  restored = ckpt.restore(like=state)
  resumed_from = None
  if restored is not None:
    state, meta, resumed_from = restored
    diff = _config_diff(meta.get("config", {}), cfg)
    if diff and not allow_config_change:
      raise ConfigMismatch(
          f"{workdir} holds a checkpoint (step {resumed_from}) of a run with another config:\n  "
          + "\n  ".join(diff)
          + "\nUse a new --workdir, or pass --allow_config_change to resume with the new config.")
    timing = meta.get("timing", timing)
    print(f"resuming from step {resumed_from} ({ckpt.directory})", file=sys.stderr)
  primary = _primary()
  if primary:
    _write_json(os.path.join(workdir, "config.json"), cfg)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  start = int(state.step)
  history = _read_jsonl(metrics_path, max_step=start)
  if jax.process_count() > 1:  # every process reads the same history before it is rewritten
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("mtpjax: metrics history read")
  if primary:
    with open(metrics_path, "w") as f:  # drop what was logged after the checkpoint we resume
      for row in history:
        f.write(json.dumps(row) + "\n")

  compile_before = timing["compile_seconds"]  # of the runs this one resumes
  compiled = {"seconds": 0.0}  # this process's, added to by compile_timer(compiled) below

  def save(state):
    if not bool(_all_finite(state.params)):
      raise NonFiniteError(f"refusing to checkpoint non-finite parameters at step {int(state.step)}")
    # Every checkpoint carries the compile time so far, so a resumed run's figure is the sum.
    timing["compile_seconds"] = compile_before + compiled["seconds"]
    return ckpt.save(state, {"config": cfg, "timing": timing})

  def cause():
    steps = ckpt.steps()
    last = os.path.join(ckpt.directory, str(steps[-1])) if steps else "none (no checkpoint yet)"
    if config.get("inner_lr") is None:
      return (f"Last good checkpoint: {last}. Likely cause: the learning rate (config.outer_lr="
              f"{config.outer_lr}) is too large for this model; lower it")
    return (f"Last good checkpoint: {last}. Likely causes: the inner learning rate "
            f"(config.inner_lr={config.inner_lr}) or the outer one (config.outer_lr="
            f"{config.outer_lr}) is too large for this model; lower it")

  def nan_message(step, what):
    return (f"non-finite {what} at meta-step {step}. {cause()}"
            + (", or set config.nan_policy='skip' to skip non-finite updates." if
               config.nan_policy == "stop" else "."))

  num_steps = config.num_steps
  per_call = config.get("steps_per_call", 1)

  def advance(state, step):
    """Runs up to the next multiple of steps_per_call (or num_steps): (state, metrics [n])."""
    n = min(per_call - step % per_call, num_steps - step)
    state, metrics = learner.run(state, n)
    return state, metrics, n

  window, t_log, t0 = [], time.perf_counter(), None
  bar = tqdm.tqdm(total=num_steps, initial=start, desc=experiment.name, unit="step",
                  disable=not (config.progress and primary), dynamic_ncols=True, file=sys.stderr)
  t_wall = time.perf_counter()
  with (open(metrics_path, "a") if primary else open(os.devnull, "w")) as mfile, \
       compile_timer(compiled):
    step = start
    while step < num_steps:
      state, metrics, n = advance(state, step)
      step += n
      window.append(metrics)
      if t0 is None:  # the first call in this process compiles: time the rest
        jax.block_until_ready(metrics)
        t0, t_log, steps_at_t0 = time.perf_counter(), time.perf_counter(), step
        window_steps = 0
      else:
        window_steps += n
      if step % config.log_every == 0 or step == num_steps:
        host = jax.device_get(window)  # the only host sync in the loop
        # Scalars per step are averaged over the window; vectors (a multi-task run's
        # per-task losses and weights, [steps, T]) element by element, kept as lists.
        row = {k: _window_mean(np.concatenate([m[k] for m in host])) for k in host[0]}
        now = time.perf_counter()
        row["steps_per_sec"] = window_steps / max(now - t_log, 1e-9) if step > steps_at_t0 else None
        row["step"] = step
        if config.nan_policy == "skip":
          row["skipped_updates"] = _skipped_updates(state.opt_state)
        mfile.write(json.dumps(row) + "\n")
        mfile.flush()
        history.append(row)
        if config.nan_policy == "skip":
          if not bool(_all_finite(state.params)):
            raise NonFiniteError(nan_message(step, "parameters (after skipped updates)"))
        else:
          bad = sorted(k for k, v in row.items()
                       if v is not None and not np.all(np.isfinite(v)))
          if bad:
            raise NonFiniteError(nan_message(step, " and ".join(bad)))
        factor = config.get("divergence_factor", 0.0)
        early = history[0]["loss"]
        if factor and math.isfinite(early) and row["loss"] > factor * max(abs(early), 1e-12):
          raise NonFiniteError(
              f"diverging: the loss at meta-step {step} is {row['loss']:.4g}, more than "
              f"config.divergence_factor={factor:g} times its first logged value {early:.4g} "
              f"(step {history[0]['step']}). {cause()}, or raise config.divergence_factor (0 turns "
              f"the check off).")
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update(step - bar.n)
        window, t_log, window_steps = [], now, 0
      if step % config.checkpoint_every == 0 or step == num_steps:
        jax.block_until_ready(state)
        timing["timed_steps"] += step - steps_at_t0
        timing["timed_seconds"] += time.perf_counter() - t0
        t0, steps_at_t0 = time.perf_counter(), step
        save(state)
  bar.close()
  timing["compile_seconds"] = compile_before + compiled["seconds"]
  train_wall = time.perf_counter() - t_wall
  if not ckpt.steps():  # e.g. resumed a finished run: nothing new to save
    save(state)

  # Every process evaluates on its own devices (the same tasks, so the same rows): the
  # parameters are replicated, and a local copy keeps evaluation free of collectives.
  params = state.params if jax.process_count() == 1 else sharding_lib.local_copy(state.params)
  t_eval = time.perf_counter()
  rows, extras = experiment.evaluate(params)
  eval_seconds = time.perf_counter() - t_eval
  if experiment.merge_by is not None:
    rows = _merged_rows(os.path.join(workdir, "results.json"), rows, experiment.merge_by)
  steps_per_sec = (timing["timed_steps"] / timing["timed_seconds"]
                   if timing["timed_seconds"] > 0 else None)
  results = {
      "benchmark": experiment.name,
      "algorithm": config.algorithm,
      "config": cfg,
      "num_steps": int(state.step),
      "meta_steps_per_sec": steps_per_sec,
      "compile_seconds": timing["compile_seconds"],
      "wall_seconds": train_wall + eval_seconds,
      "eval_seconds": eval_seconds,
      "resumed_from_step": resumed_from,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      **sharding_lib.describe(experiment.mesh),
      "jax_version": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),  # as this process started XLA with
      "rows": rows,
  }
  results.update(experiment.facts or {})
  if primary:
    _write_json(os.path.join(workdir, "results.json"), results)
    if experiment.plot is not None:
      results["plots"] = experiment.plot(workdir, params, history, extras)
  ckpt.close()
  return results


def _merged_rows(path: str, rows: list, field: str) -> list:
  """The rows of an earlier results.json whose `field` differs from every new row's, then
  the new rows."""
  if not os.path.exists(path):
    return rows
  try:
    with open(path) as f:
      old = json.load(f).get("rows", [])
  except (OSError, ValueError, AttributeError):
    warnings.warn(f"{path} is damaged; its earlier rows are not kept")
    return rows
  new = {r.get(field) for r in rows}
  return [r for r in old if isinstance(r, dict) and r.get(field) not in new] + rows


def parse_settings(settings, num_classes: Optional[int] = None) -> list:
  """["5x1", "5x5"] -> [(5, 1), (5, 5)] (ways x shots), with errors that name the field;
  num_classes, when given, bounds the ways."""
  out = []
  for s in settings:
    try:
      ways, shots = (int(v) for v in str(s).lower().split("x"))
    except ValueError:
      raise ValueError(f"config.eval_settings entries must be 'WAYSxSHOTS' like '5x1', got "
                       f"{s!r}") from None
    if ways <= 1 or shots <= 0 or (num_classes is not None and ways > num_classes):
      bound = f"2 <= ways <= {num_classes} (test classes)" if num_classes else "ways >= 2"
      raise ValueError(f"config.eval_settings: {s!r} needs {bound} and shots >= 1")
    out.append((ways, shots))
  if not out:
    raise ValueError("config.eval_settings must list at least one 'WAYSxSHOTS' setting")
  return out


def format_value(v) -> str:
  """A table cell: 4 decimals in the usual range, scientific notation when huge or tiny, and
  nan / inf spelled out, so columns never run together."""
  if v is None:
    return "-"
  v = float(v)
  if not math.isfinite(v):
    return str(v)
  if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
    return f"{v:.3e}"
  return f"{v:.4f}"


def results_table(results: dict) -> str:
  head = (f"{results['benchmark']} / {results['algorithm']}: {results['num_steps']} meta-steps, "
          + (f"{results['meta_steps_per_sec']:.0f} meta-steps/s, " if results['meta_steps_per_sec'] else "")
          + f"{results['backend']}")
  rows = results["rows"]
  if rows and "metric" not in rows[0]:  # not episodic (multi-task): one column per field
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: format_value(v) if isinstance(v, float) else str(v)
    width = {c: max(len(c), *(len(cell(r.get(c, "-"))) for r in rows)) for c in cols}
    lines = [head, " ".join(f"{c:>{width[c]}}" for c in cols)]
    lines += [" ".join(f"{cell(r.get(c, '-')):>{width[c]}}" for c in cols) for r in rows]
    return "\n".join(lines)
  lines = [head,
           f"{'metric':<10} {'setting':<12} {'inner steps':>11} {'mean':>11} {'95% CI':>11} "
           f"{'episodes':>9} {'diverged':>9}"]
  for r in results["rows"]:
    lines.append(f"{r['metric']:<10} {r['setting']:<12} {r['inner_steps']:>11} "
                 f"{format_value(r['mean']):>11} {format_value(r['ci95']):>11} "
                 f"{r['episodes']:>9} {r.get('nonfinite', 0):>9}")
  return "\n".join(lines)


def eval_rows(result: mj.EvalResult, *, metric_names: dict, setting: str) -> list[dict]:
  """results.json rows from an EvalResult: {metric, setting, inner_steps, mean, ci95, episodes}."""
  rows = []
  for name, label in metric_names.items():
    for steps, (mean, ci) in result.summary()[name].items():
      values = result.column(name, steps)
      rows.append({"metric": label, "setting": setting, "inner_steps": int(steps),
                   "mean": mean, "ci95": ci, "episodes": int(values.shape[0]),
                   # episodes whose adaptation diverged (their metric is inf/nan, and so is the
                   # mean): reported, never dropped.
                   "nonfinite": int(np.sum(~np.isfinite(values)))})
  return rows


def save_figure(fig, workdir: str, name: str) -> str:
  """Saves a matplotlib figure as workdir/name (tight layout, 110 dpi), closes it, returns the path."""
  import matplotlib.pyplot as plt
  path = os.path.join(workdir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_training_curve(workdir: str, history: list, *, metric: str, title: str) -> list:
  """training_curve.png: query loss after adaptation (and support loss before it, when logged)
  against the meta-step, from the metrics.jsonl rows. Returns [path], or [] with no history."""
  if not history:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  steps = [h["step"] for h in history]
  # A single logged point draws no line: show it as a marker and say why the curve is short.
  style = "o-" if len(history) < 2 else "-"
  if len(history) < 2:
    title += (f"\n(only {len(history)} logged point: config.log_every >= the steps run; lower "
              f"it for a curve)")
    warnings.warn("training_curve.png has a single point: config.log_every is at least the "
                  "number of meta-steps run; lower it for a curve")
  ax.plot(steps, [h["loss"] for h in history], style, label=f"query {metric} after adaptation")
  if "support_loss" in history[0]:
    ax.plot(steps, [h["support_loss"] for h in history], style, alpha=0.7,
            label=f"support {metric} before adaptation")
  ax.set(xlabel="meta-step", ylabel=f"{metric} (mean over log window)", yscale="log", title=title)
  ax.legend()
  return [save_figure(fig, workdir, "training_curve.png")]


def apply_xla_flags(extra: Optional[str]) -> None:
  """Append `extra` to $XLA_FLAGS, which XLA reads once, when JAX starts its backend.

  For flags that are a per-experiment choice (config.xla_flags), e.g. the CPU fusion setting
  that takes ~24% off batch-norm Conv4's MAML step (experiments/configs/omniglot.py). A flag
  already in $XLA_FLAGS is left as the user set it. Warns instead if the backend has already
  started in this process (then the flags cannot take effect).
  """
  if not extra:
    return
  current = os.environ.get("XLA_FLAGS", "")
  names = {f.split("=")[0] for f in current.split()}
  new = [f for f in extra.split() if f.split("=")[0] not in names]
  if not new:
    return
  from jax._src import xla_bridge  # no public API tells whether the backend has started
  if xla_bridge.backends_are_initialized():
    warnings.warn(f"config.xla_flags {' '.join(new)!r} not applied: JAX's backend has already "
                  "started in this process (set them in $XLA_FLAGS before it starts)")
    return
  os.environ["XLA_FLAGS"] = " ".join([current] + new).strip()


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
    check_config(config, algorithms, meta=meta)
    apply_xla_flags(config.get("xla_flags"))
    mj.initialize_from_env()  # a multi-process launch (README: "Several GPUs and hosts")
    experiment = build(config, make_optimizer(config))
    results = train_and_evaluate(config, flags.FLAGS.workdir, experiment,
                                 allow_config_change=flags.FLAGS.allow_config_change)
    if _primary():
      print(results_table(results))
      print(f"wrote {os.path.join(flags.FLAGS.workdir, 'results.json')}")

  app.run(run)
