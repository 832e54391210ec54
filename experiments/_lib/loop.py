"""The training loop every experiment shares: resume, train in jitted calls, log, guard,
checkpoint, evaluate, write results.json and the plots. It drives any trainer built on the
trainer core (mj.meta_learner, mj.mtl.multitask_trainer): `init`, `run(state, n)` and a
TrainState that the checkpointer saves whole.

Every run writes into its workdir:
  config.json     the resolved config
  metrics.jsonl   one JSON object per log step (training loss, grad norm, speed)
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
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import optax
import tqdm

import mtpjax as mj
from experiments._lib import env, guards, timing, workdir as workdir_lib



class Experiment(NamedTuple):
  """What an experiment script hands to the shared loop."""

  name: str                                  # benchmark name in results.json
  learner: Any                               # a trainer: init, run (mj.MetaLearner, ...)
  params: mj.Params                          # initial parameters
  evaluate: Callable[[mj.Params], tuple[list, Any]]   # params -> (rows, extras for plots)
  plot: Optional[Callable[..., list]] = None  # plot(workdir, params, history, extras) -> paths
  # A row field (e.g. "data"): rows of an earlier results.json in the workdir whose value of
  # it is not among this evaluation's are kept, so evaluating a finished run on new data adds
  # rows instead of replacing them.
  merge_by: Optional[str] = None
  facts: Optional[dict] = None               # added to results.json (e.g. parameter counts)
  # The device mesh the learner splits tasks over (env.mesh_from_env), recorded in results.json.
  mesh: Optional[jax.sharding.Mesh] = None


def make_optimizer(config) -> optax.GradientTransformation:
  opt = optax.adam(config.outer_lr)
  if config.nan_policy == "skip":
    # Skips updates with non-finite gradients; gives up after this many in a row.
    opt = optax.apply_if_finite(opt, max_consecutive_errors=config.nan_max_skips)
  return opt


def _skipped_updates(opt_state) -> int:
  return int(getattr(opt_state, "total_notfinite", 0))


def _window_mean(values: np.ndarray):
  mean = np.mean(values, axis=0)
  return float(mean) if mean.ndim == 0 else mean.tolist()


def _primary() -> bool:
  return jax.process_index() == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, experiment: Experiment,
                       *, allow_config_change: bool = False) -> dict:
  """Trains `experiment` for config.num_steps (resuming from workdir), then evaluates.

  Returns the results dict that is also written to workdir/results.json. The workdir is
  locked for the run: a second run on it fails at once, naming this one's pid and host.
  """
  workdir_lib.check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  # Several processes of one run share the workdir: the first holds the lock and writes the
  # files; every process takes part in the checkpoints (orbax coordinates them).
  lock = workdir_lib.workdir_lock(workdir) if _primary() else contextlib.nullcontext()
  with lock:
    return _train_and_evaluate(config, workdir, experiment,
                               allow_config_change=allow_config_change)


def _config_mismatch(found, cfg: dict, workdir: str, allow_config_change: bool) -> None:
  """ConfigMismatch when the newest checkpoint's saved config (found: (metadata, step) or
  None) differs from cfg and the change is not allowed."""
  diff = [] if found is None else workdir_lib.config_diff(found[0].get("config", {}), cfg)
  if diff and not allow_config_change:
    raise workdir_lib.ConfigMismatch(
        f"{workdir} holds a checkpoint (step {found[1]}) of a run with another config:\n  "
        + "\n  ".join(diff)
        + "\nUse a new --workdir, or pass --allow_config_change to resume with the new config.")


def check_resumable(config: ml_collections.ConfigDict, workdir: str, *,
                    allow_config_change: bool = False) -> None:
  """The config comparison of a resume, alone: reads only the newest checkpoint's metadata,
  so an experiment can run it before any costly setup (intents' feature computation)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  ckpt = mj.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    _config_mismatch(ckpt.metadata(), json.loads(json.dumps(config.to_dict())), workdir,
                     allow_config_change)
  finally:
    ckpt.close()


def _resume(ckpt: mj.Checkpointer, state, cfg: dict, workdir: str, allow_config_change: bool):
  """(state, resumed_from_step or None, timing) from the newest checkpoint in the workdir.

  The saved config is compared before any restore: a run with another config (a changed
  shape, another method, another experiment) is a ConfigMismatch that touches no file, so the
  original command still resumes. With --allow_config_change, a checkpoint whose arrays do
  not fit this run is a ConfigMismatch too (naming the arrays), and nothing is moved.
  """
  timing_ = {"timed_steps": 0, "timed_seconds": 0.0, "compile_seconds": 0.0}
  _config_mismatch(ckpt.metadata(), cfg, workdir, allow_config_change)
  try:
    restored = ckpt.restore(like=state)
  except mj.StructureMismatch as e:
    raise workdir_lib.ConfigMismatch(
        f"{e}\nA changed shape cannot resume, even with --allow_config_change: use a new "
        f"--workdir (this one's run resumes with its own command).") from None
  if restored is None:
    return state, None, timing_
  state, meta, resumed_from = restored
  print(f"resuming from step {resumed_from} ({ckpt.directory})", file=sys.stderr)
  return state, resumed_from, meta.get("timing", timing_)


@contextlib.contextmanager
def _interrupts_deferred():
  """Holds a Ctrl-C (SIGINT) until the block ends, then raises it: a checkpoint is written
  whole or not at all. Outside the main thread (where signals cannot be caught) it does
  nothing."""
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught:
    raise KeyboardInterrupt


def _history(workdir: str, start: int, primary: bool) -> list:
  """The metrics.jsonl rows up to the resumed step; the file is rewritten without the rest."""
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = workdir_lib.read_jsonl(metrics_path, max_step=start)
  if jax.process_count() > 1:  # every process reads the same history before it is rewritten
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("mtpjax: metrics history read")
  if primary:
    with open(metrics_path, "w") as f:  # drop what was logged after the checkpoint we resume
      for row in history:
        f.write(json.dumps(row) + "\n")
  return history


class _Loop:
  """The training part of one run: steps in calls of steps_per_call, a log row (with the NaN
  and divergence guards) every log_every steps, a checkpoint every checkpoint_every."""

  def __init__(self, config, experiment, ckpt, cfg, timing_):
    self.config, self.learner, self.ckpt, self.cfg = config, experiment.learner, ckpt, cfg
    self.name = experiment.name
    self.timing = timing_
    self.compile_before = timing_["compile_seconds"]  # of the runs this one resumes
    self.compiled = {"seconds": 0.0}  # this process's, added to by compile_timer below

  def cause(self) -> str:
    steps = self.ckpt.steps()
    last = os.path.join(self.ckpt.directory, str(steps[-1])) if steps else "none (no checkpoint yet)"
    return f"Last good checkpoint: {last}. " + guards.lr_cause(self.config)

  def nan_message(self, step, what) -> str:
    return (f"non-finite {what} at meta-step {step}. {self.cause()}"
            + (", or set config.nan_policy='skip' to skip non-finite updates." if
               self.config.nan_policy == "stop" else "."))

  def save(self, state):
    if not bool(guards.all_finite(state.params)):
      raise guards.NonFiniteError(
          f"refusing to checkpoint non-finite parameters at step {int(state.step)}")
    # Every checkpoint carries the compile time so far, so a resumed run's figure is the sum.
    self.timing["compile_seconds"] = self.compile_before + self.compiled["seconds"]
    with _interrupts_deferred():  # a Ctrl-C mid-save would leave orbax's half-written copy
      return self.ckpt.save(state, {"config": self.cfg, "timing": self.timing})

  def check(self, row, state, history):
    """Raises NonFiniteError on a non-finite row (or parameters, under "skip") or a loss that
    has grown past divergence_factor times its first logged value."""
    config, step = self.config, row["step"]
    if config.nan_policy == "skip":
      if not bool(guards.all_finite(state.params)):
        raise guards.NonFiniteError(self.nan_message(step, "parameters (after skipped updates)"))
    else:
      bad = sorted(k for k, v in row.items() if v is not None and not np.all(np.isfinite(v)))
      if bad:
        raise guards.NonFiniteError(self.nan_message(step, " and ".join(bad)))
    factor = config.get("divergence_factor", 0.0)
    early = history[0]["loss"]
    if factor and math.isfinite(early) and row["loss"] > factor * max(abs(early), 1e-12):
      raise guards.NonFiniteError(
          f"diverging: the loss at meta-step {step} is {row['loss']:.4g}, more than "
          f"config.divergence_factor={factor:g} times its first logged value {early:.4g} "
          f"(step {history[0]['step']}). {self.cause()}, or raise config.divergence_factor (0 "
          f"turns the check off).")

  def train(self, state, history, metrics_path, primary):
    """Runs to config.num_steps; returns (state, wall seconds). Ctrl-C writes a checkpoint
    of the last finished step where it can and raises guards.Interrupted."""
    config, num_steps = self.config, self.config.num_steps
    per_call = config.get("steps_per_call", 1)
    start = int(state.step)
    window, t_log, t0, steps_at_t0, window_steps = [], time.perf_counter(), None, start, 0
    bar = tqdm.tqdm(total=num_steps, initial=start, desc=self.name, unit="step",
                    disable=not (config.progress and primary), dynamic_ncols=True,
                    file=sys.stderr)
    t_wall = time.perf_counter()
    step = start
    try:
      with (open(metrics_path, "a") if primary else open(os.devnull, "w")) as mfile, \
           timing.compile_timer(self.compiled):
        while step < num_steps:
          # Up to steps_per_call steps in one call, ending at the next log or checkpoint
          # step (or num_steps).
          n = min(per_call, _next_multiple(step, config.log_every) - step,
                  _next_multiple(step, config.checkpoint_every) - step, num_steps - step)
          new_state, metrics = self.learner.run(state, n)
          with _interrupts_deferred():  # state, step and window move together
            state, step = new_state, step + n
            window.append(metrics)
          if t0 is None:  # the first call in this process compiles: time the rest
            jax.block_until_ready(metrics)
            t0, t_log, steps_at_t0, window_steps = (time.perf_counter(), time.perf_counter(),
                                                    step, 0)
            # A later call of another length (one ending at a log step that steps_per_call
            # does not divide) compiles too: its compile time is not step time.
            compiled_t0 = compiled_log = self.compiled["seconds"]
          else:
            window_steps += n
          if step % config.log_every == 0 or step == num_steps:
            now = time.perf_counter()
            busy = now - t_log - (self.compiled["seconds"] - compiled_log)
            speed = window_steps / max(busy, 1e-9) if step > steps_at_t0 else None
            row = self.log_row(window, step, speed, state)
            self.write_row(row, mfile, history)
            self.check(row, state, history)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(step - bar.n)
            window, t_log, window_steps = [], now, 0
            compiled_log = self.compiled["seconds"]
          if step % config.checkpoint_every == 0 or step == num_steps:
            jax.block_until_ready(state)
            self.timing["timed_steps"] += step - steps_at_t0
            self.timing["timed_seconds"] += (time.perf_counter() - t0
                                             - (self.compiled["seconds"] - compiled_t0))
            t0, steps_at_t0 = time.perf_counter(), step
            compiled_t0 = self.compiled["seconds"]
            self.save(state)
    except KeyboardInterrupt:
      bar.close()
      # Interrupted after a log step's call but before its row was written: the checkpoint
      # about to be saved is of that step, and a resumed run starts after it, so its row is
      # written now (without a speed) or the log would miss it for good.
      logged = history[-1]["step"] if history else None
      if window and logged != step and (step % config.log_every == 0 or step == num_steps):
        with contextlib.suppress(Exception, KeyboardInterrupt), open(
            metrics_path if primary else os.devnull, "a") as mfile:
          self.write_row(self.log_row(window, step, None, state), mfile, history)
      raise guards.Interrupted(step, self.save_if_possible(state)) from None
    bar.close()
    self.timing["compile_seconds"] = self.compile_before + self.compiled["seconds"]
    return state, time.perf_counter() - t_wall

  @staticmethod
  def write_row(row, mfile, history):
    """Appends a log row to the file and the history, together or not at all."""
    with _interrupts_deferred():
      mfile.write(json.dumps(row) + "\n")
      mfile.flush()
      history.append(row)

  def save_if_possible(self, state) -> Optional[str]:
    """The checkpoint directory holding `state` after an interrupt, or None: a state whose
    buffers were donated to an unfinished step, or a failing save, writes nothing."""
    try:
      leaves = jax.tree.leaves((state.params, state.opt_state))
      if any(a.is_deleted() for a in leaves if isinstance(a, jax.Array)):
        return None
      step = int(state.step)
      if step not in self.ckpt.steps():
        self.save(state)
      return os.path.join(self.ckpt.directory, str(step))
    except (Exception, KeyboardInterrupt):  # a second Ctrl-C, a full disk, non-finite state
      return None

  def log_row(self, window, step, speed, state) -> dict:
    host = jax.device_get(window)  # the only host sync in the loop
    # Scalars per step are averaged over the window; vectors (a multi-task run's per-task
    # losses and weights, [steps, T]) element by element, kept as lists.
    row = {k: _window_mean(np.concatenate([m[k] for m in host])) for k in host[0]}
    row["steps_per_sec"] = speed
    row["step"] = step
    if self.config.nan_policy == "skip":
      row["skipped_updates"] = _skipped_updates(state.opt_state)
    return row


def _next_multiple(step: int, every: int) -> int:
  """The first multiple of `every` after `step`."""
  return (step // every + 1) * every


def _train_and_evaluate(config, workdir, experiment, *, allow_config_change):
  cfg = json.loads(json.dumps(config.to_dict()))  # as stored: tuples become lists
  ckpt = mj.Checkpointer(os.path.join(workdir, "checkpoints"),
                         max_to_keep=config.keep_checkpoints)
  state = experiment.learner.init(experiment.params, key=jax.random.key(config.seed))
  state, resumed_from, timing_ = _resume(ckpt, state, cfg, workdir, allow_config_change)
  primary = _primary()
  if primary:
    workdir_lib.write_json(os.path.join(workdir, "config.json"), cfg)
  history = _history(workdir, int(state.step), primary)
  loop = _Loop(config, experiment, ckpt, cfg, timing_)
  state, train_wall = loop.train(state, history, os.path.join(workdir, "metrics.jsonl"), primary)
  if not ckpt.steps():  # e.g. resumed a finished run: nothing new to save
    loop.save(state)

  # Every process evaluates on its own devices (the same tasks, so the same rows): the
  # parameters are replicated, and a local copy keeps evaluation free of collectives.
  params = state.params if jax.process_count() == 1 else mj.local_copy(state.params)
  t_eval = time.perf_counter()
  rows, extras = experiment.evaluate(params)
  eval_seconds = time.perf_counter() - t_eval
  if experiment.merge_by is not None:
    rows = workdir_lib.merged_rows(os.path.join(workdir, "results.json"), rows,
                                   experiment.merge_by)
  t = loop.timing
  results = {
      "benchmark": experiment.name,
      # What trained: the meta-learning algorithm, or a multi-task run's balancing method.
      "algorithm": config.get("algorithm") or config.get("method"),
      "config": cfg,
      "num_steps": int(state.step),
      "meta_steps_per_sec": t["timed_steps"] / t["timed_seconds"] if t["timed_seconds"] > 0
                            else None,
      "compile_seconds": t["compile_seconds"],
      "wall_seconds": train_wall + eval_seconds,
      "eval_seconds": eval_seconds,
      "resumed_from_step": resumed_from,
      **env.describe(experiment.mesh),
      "rows": rows,
  }
  results.update(experiment.facts or {})
  if primary:
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
    if experiment.plot is not None:
      results["plots"] = experiment.plot(workdir, params, history, extras)
  ckpt.close()
  return results
