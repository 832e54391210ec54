"""Validation: clear errors for bad counts and episode shapes before anything compiles, and
the finite-metrics check a user calls on what a trainer returns."""

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def check_finite(metrics: dict, *, max_abs: Optional[float] = None, what: str = "metrics") -> dict:
  """Raises FloatingPointError when a metric is NaN or inf (or, with max_abs, larger than it).

  metrics: what MetaLearner.step returns (scalars) or MetaLearner.run returns (stacked over
  steps, [num_steps]). The message names the metric, the first bad step in the array and the
  likely causes. Returns the metrics on the host, so a training loop can log them. This is a
  host sync: call it at log steps, not every step. For per-operation checks inside the step,
  run with `jax.config.update("jax_debug_nans", True)` (slow; it re-runs the failing step
  op by op to find the first NaN).

  >>> import jax.numpy as jnp
  >>> check_finite({"loss": jnp.array([0.5, 0.25])})
  {'loss': array([0.5 , 0.25], dtype=float32)}
  >>> check_finite({"loss": jnp.array([0.5, jnp.nan])})
  Traceback (most recent call last):
  FloatingPointError: ...
  """
  host = jax.device_get(metrics)
  problems = []
  for name, value in sorted(host.items()):
    v = np.atleast_1d(np.asarray(value, np.float64))
    bad = ~np.isfinite(v)
    if max_abs is not None:
      bad |= np.abs(np.where(np.isfinite(v), v, 0.0)) > max_abs
    if bad.any():
      i = int(np.argmax(bad))
      where = f" at step index {i} of {v.size}" if v.size > 1 else ""
      problems.append(f"{name} = {v[i]:.4g}{where}")
  if problems:
    limit = "" if max_abs is None else f" or above {max_abs:g} in magnitude"
    raise FloatingPointError(
        f"{what} not finite{limit}: {'; '.join(problems)}. Likely causes: an inner or outer "
        f"learning rate too large for the model (lower it), NaN or inf in the data, or labels "
        f"outside [0, ways). jax.config.update('jax_debug_nans', True) finds the first NaN.")
  return host


def check_int(name, value, allow_zero=False):
  """A static count (steps, tasks): a Python int (not a bool or a float like 1.5)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
  check_positive(name, value, allow_zero)


def check_positive(name, value, allow_zero=False):
  ok = value >= 0 if allow_zero else value > 0
  if not ok or (isinstance(value, float) and not math.isfinite(value)):
    raise ValueError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")


def check_outputs_cover_ways(loss_fn, params, sample, what: str) -> None:
  """A classifier with fewer outputs than a task family's ways would see labels past its last
  class (NaN loss, chance accuracy, no error): checked from shapes alone, before compiling.

  Applies when `sample` is a family's bound method with a `ways` field, its labels are
  integers, and `loss_fn` was made by `supervised` (it records the model's apply).
  """
  ways = getattr(getattr(sample, "__self__", None), "ways", None)
  apply = getattr(loss_fn, "model_apply", None)
  if ways is None or apply is None:
    return
  ep = jax.eval_shape(sample, jax.random.key(0))
  if not jnp.issubdtype(ep.support.y.dtype, jnp.integer):
    return
  try:
    out = jax.eval_shape(apply, params, ep.support.x)
  except Exception:  # e.g. a model that needs a task representation: nothing to check here
    return
  if out.ndim >= 1 and out.shape[-1] < ways:
    raise ValueError(f"{what}: the model gives {out.shape[-1]} outputs per example, but the "
                     f"task family's episodes have ways={ways} (labels 0..{ways - 1}); build "
                     f"the head with {ways} outputs, e.g. linear_head({ways})")


def check_episode_shapes(episode: Any, what: str = "episode", *, batched: bool = False) -> None:
  """Raises a clear error when support and query disagree in anything but their length.

  With batched=True, every array has a leading task axis, which must agree everywhere.
  """
  s, q = episode.support, episode.query
  n = 1 if batched else 0  # the example axis
  # x may be a pytree (e.g. token ids with cached hidden states): every leaf is checked.
  leaves = {}
  for part, batch in (("support", s), ("query", q)):
    for field in ("x", "y"):
      flat, tree = jax.tree_util.tree_flatten_with_path(getattr(batch, field))
      leaves[part, field] = (flat, tree)
  if batched:
    sizes = {a.shape[0] for flat, _ in leaves.values() for _, a in flat}
    if len(sizes) != 1:
      raise ValueError(f"{what}: the leading task axis differs between arrays: {sorted(sizes)}")
  for field in ("x", "y"):
    (fs, ts), (fq, tq) = leaves["support", field], leaves["query", field]
    if ts != tq:
      raise ValueError(f"{what}: support.{field} and query.{field} differ in structure: "
                       f"{ts} vs {tq}")
    for (path, a), (_, b) in zip(fs, fq):
      name = field + jax.tree_util.keystr(path)
      if a.shape[n + 1:] != b.shape[n + 1:] or a.dtype != b.dtype:
        raise ValueError(f"{what}: support.{name} {a.shape} {a.dtype} and query.{name} "
                         f"{b.shape} {b.dtype} must agree in every dimension but the example "
                         f"axis")
      if a.shape[n] == 0 or b.shape[n] == 0:
        raise ValueError(f"{what}: empty support or query set ({name}: {a.shape}, {b.shape})")
  for part in ("support", "query"):
    counts = {a.shape[n] for field in ("x", "y") for _, a in leaves[part, field][0]}
    if len(counts) != 1:
      raise ValueError(f"{what}: x and y must have the same number of examples, got {part} "
                       f"sizes {sorted(counts)}")
