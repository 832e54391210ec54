"""Checks a user calls on what the Python API returns (the experiments run them for you)."""

from typing import Optional

import jax
import numpy as np


def check_finite(metrics: dict, *, max_abs: Optional[float] = None, what: str = "metrics") -> dict:
  """Raises FloatingPointError when a metric is NaN or inf (or, with max_abs, larger than it).

  metrics: what MetaLearner.step returns (scalars) or MetaLearner.run returns (stacked over
  steps, [num_steps]). The message names the metric, the first bad step in the array and the
  likely causes. Returns the metrics on the host, so a training loop can log them. This is a
  host sync: call it at log steps, not every step. For per-operation checks inside the step,
  run with `jax.config.update("jax_debug_nans", True)` (slow; it re-runs the failing step
  op by op to find the first NaN).

  >>> state, metrics = learner.run(state, 100)                                  # doctest: +SKIP
  >>> check_finite(metrics, max_abs=1e4)                                         # doctest: +SKIP
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
